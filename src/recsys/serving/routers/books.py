"""The catalogue: search, read, add, edit, delist."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from recsys.serving import blocking
from recsys.serving.auth import CATALOGUE_WRITE
from recsys.serving.books import Books
from recsys.serving.deps import PathId, books, may_act, require_scope
from recsys.serving.responses import BODY, answers
from recsys.serving.schemas import Book, BookCreate, BookIn, BookList, Review, ReviewIn, Reviews

router = APIRouter(tags=["books"])
BooksDep = Annotated[Books, Depends(books)]


@router.get("/books", response_model=BookList, responses=answers(422, 503))
async def search_books(
    catalogue: BooksDep,
    q: str = Query(..., min_length=1, max_length=200),
    limit: int = Query(20, ge=1, le=100),
) -> BookList:
    """Full-text search of titles and authors (every word, prefix match)."""
    found = await blocking.run(catalogue.search, q, limit)
    return BookList(books=[Book(**b) for b in found])


@router.get("/books/{book_id}", response_model=Book, responses=answers(404, 422, 503))
async def get_book(book_id: PathId, catalogue: BooksDep) -> Book:
    return Book(**await blocking.run(catalogue.get, book_id))


@router.post(
    "/books", status_code=201, response_model=Book, responses=answers(*BODY, 403, 409, 503)
)
async def create_book(request: Request, body: BookCreate, catalogue: BooksDep) -> Book:
    """Add a book to the catalogue (409 if the id exists)."""
    require_scope(request, CATALOGUE_WRITE)
    fields = body.model_dump(exclude={"book_id"})
    return Book(**await blocking.run(catalogue.create, body.book_id, fields))


@router.put("/books/{book_id}", response_model=Book, responses=answers(*BODY, 403, 404, 503))
async def update_book(request: Request, book_id: PathId, body: BookIn, catalogue: BooksDep) -> Book:
    """Change a book's catalogue fields (404 if it does not exist)."""
    require_scope(request, CATALOGUE_WRITE)
    fields = body.model_dump(exclude_unset=True)
    return Book(**await blocking.run(catalogue.update, book_id, fields))


@router.delete("/books/{book_id}", status_code=204, responses=answers(403, 404, 422, 503))
async def delete_book(request: Request, book_id: PathId, catalogue: BooksDep) -> Response:
    """Remove a book from the catalogue: it is no longer recommended or searchable."""
    require_scope(request, CATALOGUE_WRITE)
    await blocking.run(catalogue.delete, book_id)
    return Response(status_code=204)


@router.get("/books/{book_id}/reviews", response_model=Reviews, responses=answers(404, 422, 503))
async def get_reviews(
    book_id: PathId, catalogue: BooksDep, limit: int = Query(20, ge=1, le=100)
) -> Reviews:
    """The book's reviews, the latest first, with their count and average rating."""
    found, count, average = await blocking.run(catalogue.reviews, book_id, limit)
    return Reviews(
        book_id=book_id,
        count=count,
        average_rating=average,
        reviews=[Review(**r) for r in found],
    )


@router.post(
    "/books/{book_id}/reviews",
    response_model=Review,
    responses={**answers(*BODY, 403, 404, 503), 201: {"model": Review, "description": "created"}},
)
async def post_review(
    request: Request, response: Response, book_id: PathId, body: ReviewIn, catalogue: BooksDep
) -> Review:
    """Review a book (own token or ``events:write:any``): 201 for a new review, 200 when it
    replaces the reader's earlier one. The rating is also stored as a ``rate`` event."""
    may_act(request, body.user_id, "events:write:any")
    review, created = await blocking.run(catalogue.review, book_id, body)
    response.status_code = 201 if created else 200
    return Review(**review)


@router.delete(
    "/books/{book_id}/reviews/{user_id}", status_code=204, responses=answers(403, 404, 422, 503)
)
async def delete_review(
    request: Request, book_id: PathId, user_id: PathId, catalogue: BooksDep
) -> Response:
    """Withdraw a review (own token or ``events:write:any``)."""
    may_act(request, user_id, "events:write:any")
    await blocking.run(catalogue.delete_review, book_id, user_id)
    return Response(status_code=204)
