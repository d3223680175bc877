"""The realtime protocol as the box speaks it: the models' profiles, the rules a client must keep,
the server events, and one server skeleton for the simulator and the local engine."""
