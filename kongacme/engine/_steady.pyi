# The types of kongacme/engine/_steady.c (the compiled dispatch and steady state).
from typing import Any, Callable

CLIENT_DATA: int
CLIENT_LOST: int
CLIENT_ENDED: int
READ_FAILED: int
UPSTREAM_LOST: int
UPSTREAM_SHORT: int
UPSTREAM_ENDED: int
CLIENT_SHORT: int
BOTH_ENDED: int
HANDSHAKE_FAILED: int
HANDSHAKEN: int
CLIENT_PLAINTEXT: int

class Pair:
    cfd: int
    ufd: int
    client_steps: int
    upstream_steps: int
    departures: int
    last_activity: float
    upstream_read: int
    live: bool
    native: bool
    held: bytes | None
    client_ended: int
    def __init__(
        self,
        relay: Any,
        cfd: int,
        ufd: int,
        feed: Callable[[bytes], Any],
        read: Callable[[int], bytes],
        write: Callable[[bytes], Any],
        take: Callable[[], bytes],
        seconds: Callable[[], float],
        session: Any = None,
        upstream: tuple[int, str, int] | None = None,
    ) -> None: ...
    def close(self) -> None: ...
    def take(self) -> tuple[int, int, float]: ...

def configure(
    want_read: type[BaseException] | tuple[type[BaseException], ...],
    closed: type[BaseException] | tuple[type[BaseException], ...],
    tls_error: type[BaseException] | tuple[type[BaseException], ...],
    read_size: int,
    bulk_read_size: int,
) -> None: ...
def accept(fd: int) -> tuple[int, tuple[Any, ...]] | None: ...
def dispatch(
    epfd: int,
    handlers: dict[int, Any],
    steady: dict[int, Pair],
    max_events: int,
    failed: Callable[[Any, int, Exception], None],
    rounds: int = 1,
) -> int: ...
