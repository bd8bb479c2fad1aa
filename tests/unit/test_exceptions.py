"""The exception tree: what each error is, what it says, and that the drawing is true."""

from __future__ import annotations

import copy
import inspect
import pickle
import re

import pytest

import batchkit
from batchkit import exceptions
from batchkit.exceptions import (
    BatchkitError,
    BatchNotFound,
    InvalidBatch,
    InvalidStorageURL,
    ItemNotFound,
    MissingDependency,
    SchemaVersionMismatch,
    StorageError,
)

DEFINED = {
    name: obj
    for name, obj in vars(exceptions).items()
    if inspect.isclass(obj)
    and issubclass(obj, BaseException)
    and obj.__module__ == exceptions.__name__
}


def test_every_error_is_a_batchkit_error() -> None:
    assert set(DEFINED) >= {
        "BatchkitError",
        "BatchNotFound",
        "InvalidBatch",
        "StorageError",
        "MissingDependency",
    }
    for cls in DEFINED.values():
        assert issubclass(cls, BatchkitError), cls
    assert issubclass(BatchkitError, Exception)


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (MissingDependency, ImportError),
        (InvalidBatch, ValueError),
        (InvalidStorageURL, ValueError),
        (BatchNotFound, LookupError),
        (ItemNotFound, LookupError),
    ],
)
def test_errors_are_also_the_builtin_they_resemble(cls: type[Exception], base: type) -> None:
    # A host that already catches ValueError/LookupError/ImportError keeps working.
    assert issubclass(cls, base)


def test_storage_error_is_not_a_caller_mistake() -> None:
    assert not issubclass(StorageError, ValueError | LookupError)


@pytest.mark.parametrize(
    "cls", [BatchkitError, InvalidBatch, InvalidStorageURL, SchemaVersionMismatch, StorageError]
)
def test_default_message_is_the_docstring(cls: type[BatchkitError]) -> None:
    error = cls()
    assert str(error) == inspect.cleandoc(cls.__doc__ or "")
    assert str(error)
    assert str(cls("something specific")) == "something specific"


def test_default_messages_read_well() -> None:
    assert str(InvalidBatch()) == (
        "The batch or the request about it is not valid; nothing was written."
    )
    assert str(StorageError()).startswith("The store failed")


def test_batch_not_found_names_the_batch() -> None:
    error = BatchNotFound("0190-abc")
    assert error.batch_id == "0190-abc"
    assert str(error) == "no batch has the id '0190-abc'"


def test_item_not_found_names_the_batch_and_key() -> None:
    error = ItemNotFound("b1", "sku-9")
    assert (error.batch_id, error.key) == ("b1", "sku-9")
    assert str(error) == "batch 'b1' has no item with the key 'sku-9'"


def test_missing_dependency_says_how_to_fix_it() -> None:
    error = MissingDependency("asyncpg", "postgres")
    assert (error.package, error.extra) == ("asyncpg", "postgres")
    assert "'asyncpg' is not installed" in str(error)
    assert str(error).endswith("pip install 'batchkit[postgres]'")


def read_batch(cause: Exception) -> None:
    try:
        raise cause
    except OSError as exc:
        raise StorageError("could not read the batch") from exc


def test_storage_error_keeps_its_cause() -> None:
    cause = ConnectionResetError("server went away")
    with pytest.raises(StorageError, match="could not read the batch") as info:
        read_batch(cause)
    assert info.value.__cause__ is cause


@pytest.mark.parametrize(
    "error",
    [
        BatchkitError("plain"),
        InvalidBatch("item #3: duplicate of item #1"),
        StorageError(),
        BatchNotFound("b1"),
        ItemNotFound("b1", "k"),
        MissingDependency("redis", "redis"),
        InvalidStorageURL("bad"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling_and_copying(error: BatchkitError) -> None:
    # Hosts hand errors across processes (multiprocessing, task queues).
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(again) is type(error)
        assert str(again) == str(error)
        assert vars(again) == vars(error)


def tree_names(doc: str) -> list[str]:
    block = re.search(r"```\n(.*?)```", doc, re.DOTALL)
    assert block is not None, "the module docstring draws the tree in a code block"
    return re.findall(r"^[\s│├└─]*(\w+)", block.group(1), re.MULTILINE)


def test_the_drawn_tree_lists_every_exception() -> None:
    names = tree_names(exceptions.__doc__ or "")
    assert names[0] == "BatchkitError"
    assert sorted(names) == sorted(DEFINED)
    assert len(names) == len(set(names))


def test_the_drawn_tree_matches_the_class_hierarchy() -> None:
    block = re.search(r"```\n(.*?)```", exceptions.__doc__ or "", re.DOTALL)
    assert block is not None
    parents: list[tuple[int, str]] = []
    for line in block.group(1).splitlines():
        match = re.match(r"^([\s│├└─]*)(\w+)", line)
        if match is None:
            continue
        depth, name = len(match.group(1)), match.group(2)
        while parents and parents[-1][0] >= depth:
            parents.pop()
        if parents:
            assert DEFINED[parents[-1][1]] in DEFINED[name].__mro__, name
        parents.append((depth, name))


def test_every_exception_is_exported() -> None:
    assert set(exceptions.__all__) == set(DEFINED)
    for name in DEFINED:
        assert getattr(batchkit, name) is DEFINED[name]
        assert name in batchkit.__all__
