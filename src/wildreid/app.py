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
  is another site, and any request a browser marks as sent by another site (``Sec-Fetch-Site``),
  so no page elsewhere can make it compute or show photos (403).
- **Uploads as pages**: an upload must decode whole as a camera or web image (JPEG, PNG, WebP,
  TIFF, BMP, GIF; at most 40 Mpx), is stored by the type its bytes hold and served as ``image/*``
  with ``X-Content-Type-Options: nosniff``.
- **Oversized bodies**: every POST must state its ``Content-Length`` (no chunked bodies) within
  the limit (the upload size, 64 KiB for decisions), checked before the body is read and counted
  while it is (413; 411 without a length).
- **Replayed decisions**: a photo already decided is not decided again (409).
- **Lookalike names**: a new individual whose name looks like one of its species has
  (``chimp_\u0405agu``, its S Cyrillic, beside ``chimp_Sagu``) is refused (400), naming both.
- **Formulas in the export**: no exported cell starts a spreadsheet formula (``=``, ``+``, ``-``,
  ``@``, tab, carriage return: led by ``'``). Kept by ``tests/test_hostile_catalog.py``.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from wildreid.catalog import Catalog, CatalogError, DecisionConflict
from wildreid.images import ImageError, image_format

MAX_UPLOAD_BYTES = 30 * 1024 * 1024
#: Uploads above this many pixels are refused: plenty for any field photo, and it bounds the
#: memory one request can take (a small file can claim a huge image).
MAX_UPLOAD_PIXELS = 40_000_000
#: Room for the multipart envelope (boundaries, field headers, the species field) around the photo,
#: and the most a decision form (image id, name) may hold.
_FORM_BYTES = 64 * 1024
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
    ``Referer``); it must be this app's host and port (the scheme may differ behind an HTTPS
    proxy). Clients that send neither (curl, scripts) are not browsers a foreign page can drive,
    so they pass."""
    own = request.headers.get("host", "").lower()
    for header in ("origin", "referer"):
        value = request.headers.get(header)
        if value is not None:
            parts = urlsplit(value)
            return parts.scheme in ("http", "https") and parts.netloc.lower() == own
    return True


class _BodyLimit:
    """ASGI guard: a POST must state a ``Content-Length`` within its route's limit, and is cut
    off if its body runs past it. Chunked bodies are refused: their length is unknown until read,
    and a ``Content-Length`` beside them would not be what the server reads."""

    def __init__(self, app, limits: dict[str, int], default: int):
        self.app, self.limits, self.default = app, limits, default

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.limits.get(scope["path"], self.default)
        length = headers.get("content-length", "")
        if "transfer-encoding" in headers or not length.isdigit():
            return await _refuse(send, 411, "a request body must state its Content-Length "
                                            "(chunked bodies are refused)")
        if int(length) > limit:
            return await _refuse(send, 413, f"refused: the request is larger than "
                                            f"{limit / 2**20:.2f} MiB")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # more than it said: stop reading it
                return {"type": "http.disconnect"}
            return message

        return await self.app(scope, counted, send)


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                            *((k.lower().encode(), v.encode()) for k, v in
                              _SECURITY_HEADERS.items())]})
    await send({"type": "http.response.body", "body": body})


class _RankAhead:
    """A background thread that ranks the waiting photos ahead (:meth:`Catalog.rank_waiting`)
    and keeps the catalog's model fitted whenever it is woken (the app starts, a photo arrives,
    a decision is made, the queue is read while the catalog changed), so a page asks for
    candidates that are ready and a decision grows a fitted model. One thread
    per app; an error is kept to be shown, never raised into a request."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.asked = self.done = 0  # wake-ups asked for, and the last one a pass started after
        self.changes = threading.Condition()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._work, name="wildreid-rank-ahead",
                                       daemon=True)

    def wake(self) -> None:
        with self.changes:
            self.asked += 1
            if not self.thread.is_alive():
                self.thread.start()
            self.changes.notify_all()

    def settle(self) -> None:
        """Wait until every wake-up so far has been worked through (for tests: it waits on the
        work, never on a clock)."""
        with self.changes:
            self.changes.wait_for(lambda: self.done >= self.asked)

    def _work(self) -> None:
        while True:
            with self.changes:
                self.changes.wait_for(lambda: self.asked > self.done)
                target = self.asked
            try:
                self.catalog.rank_waiting()
                if self.catalog.has_identified_photos():
                    # Fitted now, whatever was ranked before the app opened (by catalog add):
                    # the first decision then grows the model instead of waiting on a fit.
                    self.catalog.identifier()
                self.error = None
            except Exception as error:  # shown in the queue; the app goes on
                # The page gets no detail (it could name server paths); the console does.
                print(f"wildreid review: ranking ahead stopped: {error}", file=sys.stderr)
                self.error = ("ranking ahead stopped; candidates are ranked when a photo is "
                              "opened (see the server's console)")
            with self.changes:
                self.done = target
                self.changes.notify_all()


def create_app(folder: str | Path, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               allowed_hosts: Iterable[str] = LOCAL_HOSTS, rank_ahead: bool = True) -> FastAPI:
    """The review app over the catalog in ``folder``; only requests addressed to one of
    ``allowed_hosts`` (host names or addresses, without port) are answered. ``rank_ahead``:
    rank the waiting photos in the background (:class:`_RankAhead`) so candidates are ready."""
    catalog = Catalog(folder)
    ahead = _RankAhead(catalog) if rank_ahead else None

    def changed() -> None:
        """The catalog changed (or may have): rank the waiting photos ahead again."""
        if ahead is not None:
            ahead.wake()
    app = FastAPI(title="wildreid review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.rank_ahead = ahead  # tests wait on its settle()

    @app.middleware("http")
    async def guard(request: Request, call_next) -> Response:
        foreign = request.headers.get("sec-fetch-site") in ("cross-site", "same-site")
        if foreign or (request.method in _UNSAFE_METHODS and not _same_origin(request)):
            response = JSONResponse({"detail": "refused: the request comes from another site"},
                                    status_code=403)
        else:
            response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    # Added after, so they run first: a request for another host is refused before anything
    # else, a body too large before it is read.
    app.add_middleware(_BodyLimit, limits={"/api/queries": max_upload_bytes + _FORM_BYTES},
                       default=_FORM_BYTES)
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

    @app.get("/api/individual")
    def individual(name: str) -> dict:
        """An individual's page: photos, count, first/last date, orientations."""
        try:
            return catalog.individual(name)
        except CatalogError as error:
            refuse(error, 404)

    @app.get("/api/queries")
    def waiting(order: str = "added") -> dict:
        """The review queue in ``order`` (``added``, ``uncertain`` or ``confident`` first), how
        many were reviewed, what the scores mean, and how far ranking ahead has come."""
        try:
            queue = catalog.unassigned(order)
        except CatalogError as error:
            refuse(error)
        ready = catalog.ranked_ahead()
        if len(ready) < len(queue) or (queue and not catalog.is_fitted()):
            # A change from elsewhere (another process), or the first visit: rank what waits,
            # and fit the model now (not at the first decision) where catalog add ranked it all.
            changed()
        return {"queries": queue, "reviewed": catalog.reviewed(),
                "score": "calibrated probability of the same individual"
                if catalog.preset == "accurate" else "cosine similarity",
                "ranked": sum(image in ready for image in queue),
                "ranking_error": ahead.error if ahead is not None else None}

    @app.get("/api/export")
    def export() -> Response:
        """The catalog as an AnimalCLEF metadata.csv with absolute paths: a download lands in
        the browser's folder, where paths relative to the catalog would lead nowhere. Otherwise
        as ``wildreid catalog export`` writes it (no cell a spreadsheet would run)."""
        return Response(catalog.metadata_csv(None), media_type="text/csv", headers={
            "Content-Disposition": 'attachment; filename="metadata.csv"'})

    @app.get("/photo")
    def photo(image_id: str) -> FileResponse:
        try:
            path = catalog.photo_path(image_id)
            kind = image_format(path)
        except (CatalogError, ImageError):  # the reason would name server paths
            refuse(CatalogError(f"no photo for image {image_id!r}"), 404)
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
            if not catalog.has_identified_photos():
                raise CatalogError("the catalog has no identified photos to compare with yet; "
                                   "import some with 'wildreid catalog add'")
        except CatalogError as error:
            refuse(error)
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "upload"  # the client's name never names a file
            path.write_bytes(data)
            try:
                image_id = await run_in_threadpool(
                    functools.partial(catalog.add_photo, path, None, species, None, None,
                                      MAX_UPLOAD_PIXELS, source_name=shown))
            except CatalogError as error:
                refuse(ValueError(str(error).replace(str(path), shown)))
        changed()
        return await candidates(image_id)

    @app.get("/api/candidates")
    async def candidates(image_id: str) -> dict:
        """Ranked candidates (each with up to 3 photos), the verdict in words and the threshold
        it was reached with."""
        try:
            ranked = await run_in_threadpool(catalog.identify, image_id)
        except CatalogError as error:
            refuse(error, 404)
        except ImageError:
            refuse(CatalogError(f"image {image_id!r} can no longer be decoded"), 422)
        rows = []
        for row in ranked.itertuples():
            photos_of = catalog.images(row.identity)["image_id"].tolist()
            if photos_of:  # an individual emptied since the model was fitted is no candidate
                rows.append({"rank": int(row.rank), "identity": row.identity,
                             "score": round(float(row.score), 4), "photos": photos_of[:3],
                             "count": len(photos_of),
                             # The photo whose pair gave the score: the one drawn on request.
                             "image": row.image if row.image in photos_of else None})
        species = ranked.attrs["species"]
        verdict = Catalog.verdict(ranked, species)
        if ranked.attrs["species_predicted"]:
            verdict += f" (species predicted: {species})"
        return {"image_id": image_id, "candidates": rows, "threshold": ranked.attrs["threshold"],
                "verdict": verdict, "species": species,
                "species_predicted": ranked.attrs["species_predicted"]}

    @app.get("/api/matches")
    async def matches(image_id: str, individual: str, photo: str | None = None) -> dict:
        """Local matches of the photo with ``photo`` of the individual (the one whose pair gave
        the candidate's score), or with its best-matching photo: the points the page's viewer
        draws (no picture is drawn here), the photo matched and the individual's photos."""
        try:
            picture = await run_in_threadpool(functools.partial(
                catalog.draw_matches, image_id, individual, photo, drawn=False))
        except CatalogError as error:
            refuse(error, 404)
        except ImageError:
            refuse(CatalogError(f"a photo of {individual!r} can no longer be decoded"), 422)
        return {"matches": picture.matches,
                "strength": round(picture.strength, 2), "photo": picture.photo,
                "pairs": picture.pairs,
                "photos": catalog.images(individual)["image_id"].tolist()}

    @app.post("/api/confirm")
    def confirm(image_id: str = Form(...), individual: str = Form(...)) -> dict:
        try:
            catalog.confirm(image_id, individual)
            changed()
        except DecisionConflict as error:
            refuse(error, 409)
        except CatalogError as error:
            refuse(error)
        return {"image_id": image_id, "individual": individual}

    @app.post("/api/new")
    def new(image_id: str = Form(...), name: str = Form("")) -> dict:
        try:
            made = catalog.new_individual(image_id, name if name.strip() else None)
            changed()
            return {"image_id": image_id, "individual": made}
        except DecisionConflict as error:
            refuse(error, 409)
        except CatalogError as error:
            refuse(error)

    @app.get("/api/groups")
    async def groups() -> dict:
        """Waiting photos that look like one new individual together (as ``identify
        --cluster-new`` groups them), largest group first."""
        try:
            found = await run_in_threadpool(catalog.proposed_groups)
        except ImageError:
            refuse(CatalogError("a waiting photo can no longer be decoded"), 422)
        return {"groups": found}

    @app.post("/api/new-group")
    def new_group(image_id: list[str] = Form(...), name: str = Form("")) -> dict:
        """Several waiting photos become one new individual, in one decision (one undo)."""
        try:
            made = catalog.new_group(image_id, name if name.strip() else None)
            changed()
            return {"image_ids": image_id, "individual": made}
        except DecisionConflict as error:
            refuse(error, 409)
        except CatalogError as error:
            refuse(error)

    @app.post("/api/undo")
    def undo() -> dict:
        try:
            undone = catalog.undo()
        except CatalogError as error:
            refuse(error, 409)
        changed()
        return undone

    @app.post("/api/describe")
    def describe(image_id: str = Form(...), location: str | None = Form(None),
                 notes: str | None = Form(None)) -> dict:
        """A photo's location and notes, as the field team writes them (logged; shown as text)."""
        try:
            return catalog.describe_photo(image_id, location, notes)
        except CatalogError as error:
            refuse(error)

    @app.post("/api/merge")
    def merge(source: str = Form(...), target: str = Form(...)) -> dict:
        try:
            moved = catalog.merge(source, target)
        except CatalogError as error:
            refuse(error)
        changed()
        return {"source": source, "target": target, "moved": moved}

    return app
