"""The realtime protocol as a server speaks it: the rules a client must keep, and the events sent."""
