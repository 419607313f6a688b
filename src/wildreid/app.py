"""``wildreid serve``: a local review web app over a :class:`~wildreid.catalog.Catalog`.

Browse individuals and their photos, upload a query photo, see its ranked candidates, confirm a
match or declare a new individual.

What it protects against (each kept by a test in ``tests/test_app.py`` or ``test_browser.py``):

- **Files outside the catalog**: photos are served by image id from the catalog's records only, and
  stored under names the catalog makes (hash of the bytes + detected image type); ids and names are
  free text that never reaches the file system. Ids and names travel as query parameters, so
  ``lion/7`` works and ``../`` means nothing.
- **Script injection (stored XSS)**: the page builds every element with ``textContent`` and DOM
  properties, never HTML strings; a Content-Security-Policy allows only the app's own script file.
- **Cross-site requests (CSRF) and DNS rebinding**: requests whose ``Host`` is not one the app was
  bound to are refused (400), and so are state-changing requests whose ``Origin`` (or ``Referer``)
  is another site (403).
- **Uploads as pages**: an upload must decode as an image, is stored by the type its bytes hold and
  served as ``image/*`` with ``X-Content-Type-Options: nosniff``; an upload larger than the limit is
  refused by its ``Content-Length`` before it is read (413; 411 without a length).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from wildreid.catalog import Catalog, CatalogError
from wildreid.images import ImageError, image_format

MAX_UPLOAD_BYTES = 30 * 1024 * 1024
#: Room for the multipart envelope (boundaries, field headers, the species field) around the photo.
_FORM_OVERHEAD = 64 * 1024
LOCAL_HOSTS = ("127.0.0.1", "localhost")
_STATIC = Path(__file__).parent / "static"
_ASSETS = {"review.js": "text/javascript", "review.css": "text/css"}
_SECURITY_HEADERS = {
    # Only the app's own files: no inline script, no other origin, no framing.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _same_origin(request: Request) -> bool:
    """A browser names the page that sent a state-changing request in ``Origin`` (or at least
    ``Referer``); it must be this app. Clients that send neither (curl, scripts) are not
    browsers a foreign page can drive, so they pass."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" == own
    return True


def create_app(folder: str | Path, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               allowed_hosts: Iterable[str] = LOCAL_HOSTS) -> FastAPI:
    """The review app over the catalog in ``folder``; only requests addressed to one of
    ``allowed_hosts`` (host names or addresses, without port) are answered."""
    catalog = Catalog(folder)
    app = FastAPI(title="wildreid review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next) -> Response:
        if request.method in _UNSAFE_METHODS and not _same_origin(request):
            response = JSONResponse({"detail": "refused: the request comes from another site"},
                                    status_code=403)
        elif request.method == "POST" and request.url.path == "/api/queries":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                response = JSONResponse({"detail": "an upload must state its Content-Length"},
                                        status_code=411)
            elif int(length) > max_upload_bytes + _FORM_OVERHEAD:
                response = JSONResponse(
                    {"detail": f"upload refused: larger than {max_upload_bytes / 2**20:g} MiB"},
                    status_code=413)
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    # Added last, so it runs first: a request for another host is refused before anything else.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    def refuse(error: Exception, status: int = 400):
        raise HTTPException(status_code=status, detail=str(error)) from None

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (_STATIC / "review.html").read_text(encoding="utf-8")

    @app.get("/static/{name}")
    def asset(name: str) -> FileResponse:
        if name not in _ASSETS:
            refuse(ValueError(f"no file {name!r}"), 404)
        return FileResponse(_STATIC / name, media_type=_ASSETS[name])

    @app.get("/api/individuals")
    def individuals() -> list[dict]:
        return catalog.individuals().astype(object).where(lambda f: f.notna(), None).to_dict(
            "records")

    @app.get("/api/photos")
    def photos(individual: str) -> list[str]:
        return catalog.images(individual)["image_id"].tolist()

    @app.get("/api/queries")
    def waiting() -> dict:
        """Photos in the catalog without an individual yet, and what the scores mean."""
        return {"queries": catalog.unassigned(),
                "score": "calibrated probability of the same individual"
                if catalog.preset == "accurate" else "cosine similarity"}

    @app.get("/photo")
    def photo(image_id: str) -> FileResponse:
        try:
            path = catalog.photo_path(image_id)
            kind = image_format(path)
        except (CatalogError, ImageError) as error:
            refuse(CatalogError(f"no photo for image {image_id!r}: {error}"), 404)
        media_type = Image.MIME.get(kind, "")
        if not media_type.startswith("image/"):
            refuse(CatalogError(f"image {image_id!r} is not in a format browsers show"), 404)
        return FileResponse(path, media_type=media_type)

    @app.post("/api/queries")
    async def upload(photo: UploadFile = File(...), species: str = Form("")) -> dict:
        shown = photo.filename or "upload"
        data = await photo.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            refuse(ValueError(f"{shown}: larger than {max_upload_bytes / 2**20:g} MiB"), 413)
        try:  # before the photo is stored, so a refused upload leaves nothing behind
            species = catalog.check_species(species)
        except CatalogError as error:
            refuse(error)
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "upload"  # the client's name never names a file
            path.write_bytes(data)
            try:
                image_id = await run_in_threadpool(catalog.add_photo, path, None, species)
            except CatalogError as error:
                refuse(ValueError(str(error).replace(str(path), shown)))
        return {"image_id": image_id, "candidates": await candidates(image_id)}

    @app.get("/api/candidates")
    async def candidates(image_id: str) -> list[dict]:
        try:
            ranked = await run_in_threadpool(catalog.identify, image_id)
        except CatalogError as error:
            refuse(error, 404)
        rows = []
        for row in ranked.itertuples():
            photos_of = catalog.images(row.identity)["image_id"].tolist()
            rows.append({"rank": int(row.rank), "identity": row.identity,
                         "score": round(float(row.score), 4), "photo": photos_of[0]})
        return rows

    @app.get("/api/matches")
    async def matches(image_id: str, individual: str) -> dict:
        """ALIKED keypoints on the animal matched by LightGlue against the individual's best
        photo, drawn (data URI)."""
        try:
            picture = await run_in_threadpool(catalog.draw_matches, image_id, individual)
        except CatalogError as error:
            refuse(error, 404)
        return {"image": picture}

    @app.post("/api/confirm")
    def confirm(image_id: str = Form(...), individual: str = Form(...)) -> dict:
        try:
            catalog.confirm(image_id, individual)
        except CatalogError as error:
            refuse(error)
        return {"image_id": image_id, "individual": individual}

    @app.post("/api/new")
    def new(image_id: str = Form(...), name: str = Form("")) -> dict:
        try:
            return {"image_id": image_id,
                    "individual": catalog.new_individual(image_id, name if name.strip() else None)}
        except CatalogError as error:
            refuse(error)

    return app
