"""The adapters' shared plumbing (batchkit.storage._base), without a server.

The backoff's bounds, the retry loop (retries, giving up, faults that are not retried,
cancellation), the prefix rules, the synchronous-driver refusal and ``async with``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from batchkit.exceptions import InvalidStorageURL, StorageError
from batchkit.storage import _base
from batchkit.storage._base import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    KEY_PREFIX,
    SYNC_SPELLINGS,
    TABLE_PREFIX,
    AsyncContext,
    Fault,
    backoff,
    chained,
    fault_of,
    refuse_synchronous_driver,
    retrying,
    validate_prefix,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    # Nothing here needs a driver: the loop runs the same on both backends.
    backend: str = request.param
    return backend


# -- backoff ---------------------------------------------------------------------------------


def test_backoff_doubles_from_the_first_wait_to_the_most() -> None:
    assert BACKOFF_FIRST == 0.1
    assert BACKOFF_MAX == 2.0
    assert [backoff(n) for n in range(1, 9)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("tries", [1, 2, 3, 5, 6, 7, 20, 64, 1_100, 10**6])
def test_backoff_stays_within_its_bounds(tries: int) -> None:
    delay = backoff(tries)
    assert isinstance(delay, float)
    assert BACKOFF_FIRST <= delay <= BACKOFF_MAX
    assert backoff(tries + 1) >= delay


def test_backoff_is_the_adapters_formula() -> None:
    # What SQL and Redis computed inline before the formula had a home of its own.
    for tries in range(1, 1_000):
        assert backoff(tries) == min(2.0, 0.05 * 2**tries)


# -- the retry loop --------------------------------------------------------------------------


class Transient(Exception):
    """A fault the same try may get past (a dropped connection)."""


class Permanent(Exception):
    """A fault no retry gets past (an error answer)."""


class Wrapped(Exception):
    """A driver's error inside a wrapper, as SQLAlchemy's DBAPIError holds one."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__(f"wrapped: {orig}")
        self.orig = orig


def classify(exc: Exception) -> Fault | None:
    if isinstance(exc, Transient):
        return Fault(transient=True, shown=exc, cause=exc)
    if isinstance(exc, Permanent):
        return Fault(transient=False, shown=exc, cause=exc)
    if isinstance(exc, Wrapped):
        return classify_orig(exc)
    return None


def classify_orig(exc: Wrapped) -> Fault:
    return Fault(transient=False, shown=exc.orig, cause=None)


def fault(exc: BaseException) -> StorageError:
    return fault_of(exc, {"s3cret"})


class Tries:
    """An attempt that raises the given errors, one per try, then returns ``result``."""

    def __init__(self, *errors: Exception, result: str = "done") -> None:
        self.errors = list(errors)
        self.result = result
        self.count = 0

    async def __call__(self) -> str:
        self.count += 1
        await anyio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        return self.result


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Retries without the backoff's wait; the retries' numbers, in order."""
    waited: list[int] = []

    def instant(tries: int) -> float:
        waited.append(tries)
        return 0.0

    monkeypatch.setattr(_base, "backoff", instant)
    return waited


def run(
    attempt: Callable[[], Awaitable[Any]], *, retries: int = 3, write: bool = True, **options: Any
) -> Awaitable[Any]:
    return retrying(
        attempt, classify=classify, fault=fault, retries=retries, write=write, **options
    )


async def test_a_try_that_succeeds_is_made_once(no_wait: list[int]) -> None:
    attempt = Tries()
    assert await run(attempt) == "done"
    assert attempt.count == 1
    assert no_wait == []


@pytest.mark.parametrize("write", [True, False])
async def test_a_transient_fault_is_retried(write: bool, no_wait: list[int]) -> None:
    attempt = Tries(Transient("dropped"), Transient("dropped again"))
    assert await run(attempt, retries=3, write=write) == "done"
    assert attempt.count == 3
    assert no_wait == [1, 2]


async def test_each_retry_waits_the_backoff_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("batchkit.tests.base")
    attempt = Tries(Transient("dropped"), Transient("dropped again"))
    with caplog.at_level(logging.WARNING, logger.name):
        before = anyio.current_time()
        assert await run(attempt, logger=logger, message="transient test fault, retrying")
        waited = anyio.current_time() - before
    assert waited >= backoff(1) + backoff(2) - 0.01
    records = [r for r in caplog.records if r.name == logger.name]
    assert [r.getMessage() for r in records] == ["transient test fault, retrying"] * 2
    assert [(r.attempt, r.delay) for r in records] == [(1, 0.1), (2, 0.2)]  # type: ignore[attr-defined]


async def test_without_a_logger_nothing_is_logged(
    caplog: pytest.LogCaptureFixture, no_wait: list[int]
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert await run(Tries(Transient("dropped"))) == "done"
    assert not [r for r in caplog.records if r.name.startswith("batchkit")]


@pytest.mark.parametrize("retries", [0, 1, 4])
async def test_a_transient_fault_past_the_retries_gives_up_with_a_storage_error(
    retries: int, no_wait: list[int]
) -> None:
    last = Transient("dropped for good, password s3cret")
    attempt = Tries(*[Transient("dropped")] * retries, last)
    with pytest.raises(StorageError) as info:
        await run(attempt, retries=retries)
    assert attempt.count == retries + 1
    assert no_wait == list(range(1, retries + 1))
    assert str(info.value) == "Transient: dropped for good, password ***"
    assert info.value.__cause__ is last


@pytest.mark.parametrize("write", [True, False])
async def test_a_fault_that_is_not_transient_is_not_retried(
    write: bool, no_wait: list[int]
) -> None:
    error = Permanent("WRONGTYPE")
    attempt = Tries(error)
    with pytest.raises(StorageError, match=r"^Permanent: WRONGTYPE$") as info:
        await run(attempt, retries=5, write=write)
    assert attempt.count == 1
    assert no_wait == []
    assert info.value.__cause__ is error


async def test_the_error_shown_and_its_cause_are_the_classifiers(no_wait: list[int]) -> None:
    # SQL shows the driver's error inside SQLAlchemy's wrapper; a cause showing a secret
    # is not chained at all.
    attempt = Tries(Wrapped(Permanent("inner")))
    with pytest.raises(StorageError, match=r"^Permanent: inner$") as info:
        await run(attempt)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


async def test_an_error_that_is_not_the_stores_propagates_as_it_is(no_wait: list[int]) -> None:
    bug = KeyError("a bug")
    attempt = Tries(bug)
    with pytest.raises(KeyError) as info:
        await run(attempt)
    assert info.value is bug
    assert attempt.count == 1
    assert no_wait == []


async def test_a_cancellation_during_the_wait_is_not_swallowed() -> None:
    tries = 0

    async def attempt() -> None:
        nonlocal tries
        tries += 1
        if tries == 2:
            scope.cancel()  # inside the write's shield: it arrives in the wait that follows
        raise Transient("dropped")

    with anyio.CancelScope() as scope:
        await run(attempt, retries=10)
    assert scope.cancelled_caught
    assert tries == 2


async def test_a_read_is_cancelled_mid_try() -> None:
    finished = False

    async def slow_read() -> str:
        nonlocal finished
        await anyio.sleep(0.3)
        finished = True
        return "read"

    with anyio.move_on_after(0.05) as scope:
        await run(slow_read, write=False)
    assert scope.cancelled_caught
    assert not finished


async def test_a_write_runs_to_its_end_and_the_cancellation_arrives_after() -> None:
    # Cancelled between the store's answer and the return, a claim would be lost: the try
    # is shielded, and the cancellation is delivered at the caller's next checkpoint.
    finished = False
    classified: list[BaseException] = []

    async def slow_write() -> str:
        nonlocal finished
        await anyio.sleep(0.2)
        finished = True
        return "written"

    def seen(exc: Exception) -> Fault | None:
        classified.append(exc)
        return classify(exc)

    returned: list[str] = []
    with anyio.move_on_after(0.05) as scope:
        returned.append(await retrying(slow_write, classify=seen, fault=fault, retries=3))
        await anyio.lowlevel.checkpoint()
        returned.append("not reached")
    assert scope.cancelled_caught
    assert finished
    assert returned == ["written"]
    assert classified == []  # a cancellation is never taken for a fault


async def test_a_cancellation_inside_a_try_is_not_taken_for_a_fault() -> None:
    classified: list[BaseException] = []

    def seen(exc: Exception) -> Fault | None:
        classified.append(exc)
        return Fault(transient=True, shown=exc, cause=exc)

    async def waits() -> None:
        await anyio.sleep(10)

    with anyio.move_on_after(0.05) as scope:
        await retrying(waits, classify=seen, fault=fault, retries=3, write=False)
    assert scope.cancelled_caught
    assert classified == []


def test_fault_of_names_the_error_and_hides_the_secrets() -> None:
    error = fault_of(ConnectionError("auth s3cret refused"), ["s3cret"])
    assert isinstance(error, StorageError)
    assert str(error) == "ConnectionError: auth *** refused"


def test_an_error_showing_a_secret_is_not_chained() -> None:
    shows = ConnectionError("auth s3cret refused")
    hides = ConnectionError("refused")
    assert chained(shows, ["s3cret"]) is None
    assert chained(hides, ["s3cret"]) is hides


# -- prefixes --------------------------------------------------------------------------------

# The cases of the Redis and SQL adapters' own tests, and their edges.
KEY_PREFIXES_ACCEPTED = ["batchkit", "a", "0", "_x", "x" * 64, "app:v1", "a.b-c_d", "A9:"]
KEY_PREFIXES_REFUSED = ["", "{tag}", "a b", "x" * 65, ":lead", ".lead", "-lead", "é", "a\n"]
TABLE_PREFIXES_ACCEPTED = ["batchkit_", "app_", "a", "_", "_x9", "x" * 31, "App_1"]
TABLE_PREFIXES_REFUSED = ["", "no spaces", "1abc", "x" * 32, "a-b", "a.b", "é", "a\n", "a;"]
NOT_TEXT = [None, b"batchkit", 5, ["a"]]


@pytest.mark.parametrize("prefix", KEY_PREFIXES_ACCEPTED)
def test_a_key_prefix_is_accepted(prefix: str) -> None:
    from batchkit.storage.redis.storage import validate_prefix as redis_prefix

    assert validate_prefix(prefix, KEY_PREFIX) == prefix
    assert redis_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", [*KEY_PREFIXES_REFUSED, *NOT_TEXT])
def test_a_key_prefix_is_refused(prefix: Any) -> None:
    from batchkit.storage.redis.storage import validate_prefix as redis_prefix

    message = (
        "prefix must be 1 to 64 letters, digits or '_.:-' (and not start with one of "
        f"'.:-'), got {prefix!r}"
    )
    with pytest.raises(ValueError, match=r"^prefix must be") as info:
        validate_prefix(prefix, KEY_PREFIX)
    assert str(info.value) == message
    with pytest.raises(ValueError, match=r"^prefix must be") as info:
        redis_prefix(prefix)
    assert str(info.value) == message


@pytest.mark.parametrize("prefix", TABLE_PREFIXES_ACCEPTED)
def test_a_table_prefix_is_accepted(prefix: str) -> None:
    assert validate_prefix(prefix, TABLE_PREFIX) == prefix


@pytest.mark.parametrize("prefix", [*TABLE_PREFIXES_REFUSED, *NOT_TEXT])
def test_a_table_prefix_is_refused(prefix: Any) -> None:
    with pytest.raises(ValueError, match=r"^table_prefix must be") as info:
        validate_prefix(prefix, TABLE_PREFIX)
    assert str(info.value) == (
        "table_prefix must be 1 to 31 letters, digits or underscores, not starting "
        f"with a digit; got {prefix!r}"
    )


# -- synchronous drivers ---------------------------------------------------------------------


@pytest.mark.parametrize(("scheme", "fixed"), sorted(SYNC_SPELLINGS.items()))
def test_a_synchronous_driver_is_refused_with_its_async_spelling(scheme: str, fixed: str) -> None:
    with pytest.raises(InvalidStorageURL) as info:
        refuse_synchronous_driver(f"{scheme.upper()}://app:s3cret@db/app")
    assert str(info.value) == (
        f"{scheme}:// names a synchronous driver; batchkit is async: use {fixed}://app:***@db/app"
    )


@pytest.mark.parametrize(
    "url", ["postgresql+asyncpg://db/app", "redis://db", "memory://", "sqlite+aiosqlite://"]
)
def test_an_async_driver_passes(url: str) -> None:
    refuse_synchronous_driver(url)


def test_an_adapter_may_name_its_own_spellings_and_error() -> None:
    with pytest.raises(ValueError, match="synchronous") as info:
        refuse_synchronous_driver("postgres://db/app", {"postgres": "x+y"}, error=ValueError)
    assert type(info.value) is ValueError
    assert "use x+y://db/app" in str(info.value)
    refuse_synchronous_driver("mysql+pymysql://db/app", {"postgres": "x+y"})


# -- async with ------------------------------------------------------------------------------


class Opened(AsyncContext):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def open(self) -> None:
        self.calls.append("open")

    async def aclose(self) -> None:
        self.calls.append("aclose")


async def test_async_with_opens_and_closes() -> None:
    storage = Opened()
    async with storage as entered:
        assert entered is storage
        assert storage.calls == ["open"]
    assert storage.calls == ["open", "aclose"]


async def test_async_with_closes_on_an_error_and_lets_it_through() -> None:
    storage = Opened()
    with pytest.raises(RuntimeError, match="boom"):
        async with storage:
            raise RuntimeError("boom")
    assert storage.calls == ["open", "aclose"]


async def test_the_adapters_open_with_async_with() -> None:
    from batchkit import MemoryStorage
    from batchkit.storage.redis import RedisStorage

    assert issubclass(RedisStorage, AsyncContext)
    memory = MemoryStorage()
    async with memory as entered:
        assert entered is memory
    assert memory._closed
