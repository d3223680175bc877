"""The two pages (captions screen at ``/``, admin at ``/admin``), their assets, the captions stream.

Plain HTML, CSS and JavaScript from ``pages/``: nothing to build, nothing fetched from the
internet (the kiosk may be offline), served with ``no-cache`` so an update shows at the next load.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from services.control.live import CaptionHub

PAGES_DIR = Path(__file__).resolve().parent / "pages"
_NO_CACHE = {"Cache-Control": "no-cache"}


def mount_pages(app: FastAPI, hub: CaptionHub) -> None:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def captions_screen() -> FileResponse:
        return FileResponse(PAGES_DIR / "index.html", headers=_NO_CACHE)

    @router.get("/admin")
    async def admin_page() -> FileResponse:
        return FileResponse(PAGES_DIR / "admin.html", headers=_NO_CACHE)

    @router.websocket("/api/captions")
    async def captions_stream(ws: WebSocket) -> None:
        await hub.serve(ws)

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=PAGES_DIR, html=False), name="static")
