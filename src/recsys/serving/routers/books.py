"""The catalogue: search, read, add, edit, delist."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from recsys.serving.auth import CATALOGUE_WRITE
from recsys.serving.books import Books
from recsys.serving.deps import PathId, books, require_scope
from recsys.serving.responses import BODY, answers
from recsys.serving.schemas import Book, BookCreate, BookIn, BookList

router = APIRouter(tags=["books"])
BooksDep = Annotated[Books, Depends(books)]


@router.get("/books", response_model=BookList, responses=answers(422, 503))
async def search_books(
    catalogue: BooksDep,
    q: str = Query(..., min_length=1, max_length=200),
    limit: int = Query(20, ge=1, le=100),
) -> BookList:
    """Full-text search of titles and authors (every word, prefix match)."""
    found = await run_in_threadpool(catalogue.search, q, limit)
    return BookList(books=[Book(**b) for b in found])


@router.get("/books/{book_id}", response_model=Book, responses=answers(404, 422, 503))
async def get_book(book_id: PathId, catalogue: BooksDep) -> Book:
    return Book(**await run_in_threadpool(catalogue.get, book_id))


@router.post(
    "/books", status_code=201, response_model=Book, responses=answers(*BODY, 403, 409, 503)
)
async def create_book(request: Request, body: BookCreate, catalogue: BooksDep) -> Book:
    """Add a book to the catalogue (409 if the id exists)."""
    require_scope(request, CATALOGUE_WRITE)
    fields = body.model_dump(exclude={"book_id"})
    return Book(**await run_in_threadpool(catalogue.create, body.book_id, fields))


@router.put("/books/{book_id}", response_model=Book, responses=answers(*BODY, 403, 404, 503))
async def update_book(request: Request, book_id: PathId, body: BookIn, catalogue: BooksDep) -> Book:
    """Change a book's catalogue fields (404 if it does not exist)."""
    require_scope(request, CATALOGUE_WRITE)
    fields = body.model_dump(exclude_unset=True)
    return Book(**await run_in_threadpool(catalogue.update, book_id, fields))


@router.delete("/books/{book_id}", status_code=204, responses=answers(403, 404, 422, 503))
async def delete_book(request: Request, book_id: PathId, catalogue: BooksDep) -> Response:
    """Remove a book from the catalogue: it is no longer recommended or searchable."""
    require_scope(request, CATALOGUE_WRITE)
    await run_in_threadpool(catalogue.delete, book_id)
    return Response(status_code=204)
