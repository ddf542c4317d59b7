"""Server-side filtering, sorting and paging of the trial table, on hand-made rows."""

from __future__ import annotations

from proxstudy.dashboards.trial_query import filter_rows, page_of, sort_rows

ROWS = [
    {"number": 0, "method": "bp", "lr": 0.1, "status": "completed", "error": None},
    {"number": 1, "method": "pp cg3", "lr": 1.0, "status": "diverged", "error": ""},
    {"number": 2, "method": "pp cg3", "lr": 0.01, "status": "failed", "error": "boom"},
    {"number": 3, "method": "PP cg1", "lr": "fast", "status": "completed", "error": None},
    {"number": 4, "method": "bp", "lr": None, "status": "running", "error": None},
]


def numbers(rows):
    return [r["number"] for r in rows]


def test_filters_as_datatable_writes_them():
    assert numbers(filter_rows(ROWS, '{method} contains "cg3"')) == [1, 2]
    assert numbers(filter_rows(ROWS, "{method} icontains pp")) == [1, 2, 3]
    assert numbers(filter_rows(ROWS, "{method} scontains pp")) == [1, 2]  # what the table sends for text
    assert numbers(filter_rows(ROWS, "{method} i= PP CG1")) == [3] and numbers(filter_rows(ROWS, "{lr} s> 0.5")) == [1]
    assert numbers(filter_rows(ROWS, "{lr} >= 0.1")) == [0, 1]  # text and empty cells never compare
    assert numbers(filter_rows(ROWS, "{lr} lt 0.1")) == [2]
    assert numbers(filter_rows(ROWS, "{lr} = 1")) == [1]
    assert numbers(filter_rows(ROWS, "{lr} = fast")) == [3]
    assert numbers(filter_rows(ROWS, '{status} = "completed" && {method} = bp')) == [0]
    assert numbers(filter_rows(ROWS, "{error} is blank")) == [0, 1, 3, 4]
    assert numbers(filter_rows(ROWS, "{error} is not blank")) == [2]
    assert numbers(filter_rows(ROWS, "{status} datestartswith comp")) == [0, 3]
    assert numbers(filter_rows(ROWS, "")) == [0, 1, 2, 3, 4]
    assert filter_rows(ROWS, "lr > 1") == []  # not a clause: matches nothing rather than everything
    assert filter_rows(ROWS, "{nope} = 1") == []


def test_sorts_numbers_then_text_with_empty_cells_last_and_stable_keys():
    assert numbers(sort_rows(ROWS, [{"column_id": "lr", "direction": "asc"}])) == [2, 0, 1, 3, 4]
    assert numbers(sort_rows(ROWS, [{"column_id": "lr", "direction": "desc"}])) == [3, 1, 0, 2, 4]
    by_two = sort_rows(ROWS, [{"column_id": "method", "direction": "asc"},
                              {"column_id": "number", "direction": "desc"}])
    assert numbers(by_two) == [3, 4, 0, 2, 1]  # "PP" < "bp" < "pp" (text order), then number descending


def test_pages_and_clamps_the_page_number():
    page = page_of(ROWS, 1, 2)
    assert numbers(page.rows) == [2, 3] and page.page_count == 3 and page.matched == 5
    assert numbers(page_of(ROWS, 99, 2).rows) == [4]  # beyond the last page: the last page
    empty = page_of(ROWS, 0, 2, filter_query="{method} = none")
    assert empty.rows == [] and empty.page_count == 1 and empty.matched == 0
