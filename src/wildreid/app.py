"""``wildreid serve``: a local review web app over a :class:`~wildreid.catalog.Catalog`.

Browse individuals and their photos, upload a query photo, see its ranked candidates, confirm a
match or declare a new individual. Only catalog photos are ever served (by image id, never by
path); uploads are size-limited and must decode as images. Binds to localhost unless told.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from wildreid.catalog import Catalog, CatalogError

MAX_UPLOAD_BYTES = 30 * 1024 * 1024
_PAGE = Path(__file__).parent / "static" / "review.html"


def create_app(folder: str | Path, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    catalog = Catalog(folder)
    app = FastAPI(title="wildreid review", docs_url=None, redoc_url=None)

    def refuse(error: Exception, status: int = 400):
        raise HTTPException(status_code=status, detail=str(error)) from None

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _PAGE.read_text(encoding="utf-8")

    @app.get("/api/individuals")
    def individuals() -> list[dict]:
        return catalog.individuals().astype(object).where(lambda f: f.notna(), None).to_dict(
            "records")

    @app.get("/api/individuals/{name}/photos")
    def photos(name: str) -> list[str]:
        return catalog.images(name)["image_id"].tolist()

    @app.get("/api/queries")
    def waiting() -> dict:
        """Photos in the catalog without an individual yet, and what the scores mean."""
        return {"queries": catalog.unassigned(),
                "score": "calibrated probability of the same individual"
                if catalog.preset == "accurate" else "cosine similarity"}

    @app.get("/photos/{image_id}")
    def photo(image_id: str) -> FileResponse:
        try:
            return FileResponse(catalog.photo_path(image_id))
        except CatalogError as error:
            refuse(error, 404)

    @app.post("/api/queries")
    async def upload(photo: UploadFile = File(...), species: str = Form("")) -> dict:
        data = await photo.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            refuse(ValueError(f"{photo.filename}: larger than {max_upload_bytes // 2**20} MiB"), 413)
        suffix = Path(photo.filename or "photo.jpg").suffix.lower()[:8] or ".jpg"
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                image_id = await run_in_threadpool(catalog.add_photo, path, None, species or None)
            except CatalogError as error:
                refuse(ValueError(str(error).replace(str(path), photo.filename or "upload")))
        return {"image_id": image_id, "candidates": await candidates(image_id)}

    @app.get("/api/queries/{image_id}/candidates")
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

    @app.get("/api/queries/{image_id}/matches/{individual}")
    async def matches(image_id: str, individual: str) -> dict:
        """ALIKED keypoints on the animal matched by LightGlue against the individual's best
        photo, drawn (data URI), with the calibrated-free match strength."""
        try:
            picture = await run_in_threadpool(catalog.draw_matches, image_id, individual)
        except CatalogError as error:
            refuse(error, 404)
        return {"image": picture}

    @app.post("/api/queries/{image_id}/confirm")
    def confirm(image_id: str, individual: str = Form(...)) -> dict:
        try:
            catalog.confirm(image_id, individual)
        except CatalogError as error:
            refuse(error)
        return {"image_id": image_id, "individual": individual}

    @app.post("/api/queries/{image_id}/new")
    def new(image_id: str, name: str = Form("")) -> dict:
        try:
            return {"image_id": image_id, "individual": catalog.new_individual(image_id,
                                                                                name or None)}
        except CatalogError as error:
            refuse(error)

    return app
