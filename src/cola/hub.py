"""Is the Hugging Face hub reachable? Decided once, quickly, before anything tries the hub.

Without a network, `datasets` and `huggingface_hub` retry every request with exponential back-off (five
retries, 1 + 2 + 4 + 8 + 8 s, two warning lines each) before they give up; a run that names a hub dataset,
a hub reference set or a hub model would spend that and print the retries, then fail. cola asks first:
the offline switches the Hugging Face libraries honour (HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE for
everything, HF_DATASETS_OFFLINE for datasets) are read, and otherwise one HEAD request to the hub's endpoint
(HF_ENDPOINT, through huggingface_hub's own HTTP client, so its proxy and certificate settings apply) with a
short timeout answers. A request that gets any HTTP answer, even an error status, means the hub is there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

from cola.errors import ColaError, first_line

log = logging.getLogger(__name__)

HUB_CHECK_TIMEOUT_S = 5.0  # the HEAD request's connect/read limit; an absent DNS answers at once
DATASET_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
MODEL_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Loggers whose warnings narrate each retry of a failing hub request ("Retrying in 4s [Retry 3/5]").
RETRY_LOGGERS = ("huggingface_hub.utils._http", "huggingface_hub.hf_api", "datasets.utils.file_utils")
_TRUE = frozenset({"1", "on", "yes", "true"})


def hub_unreachable_reason(offline_variables: Sequence[str] = DATASET_OFFLINE_VARIABLES, *,
                           timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """None when the hub answers; else why it is out of reach ("HF_HUB_OFFLINE=1 is set", "no answer from ...").

    At most one HEAD request of at most `timeout` seconds; none when an offline variable is set.
    """
    for name in offline_variables:
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name}={os.environ[name]} is set"
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except (httpx.HTTPError, OSError) as exc:
        detail = first_line(exc)
        return f"no answer from {constants.ENDPOINT}: {detail}"
    return None


def require_hub(resource: str, fix: str, *,
                offline_variables: Sequence[str] = DATASET_OFFLINE_VARIABLES) -> None:
    """Raise a one-line ColaError when the hub is out of reach: `{resource} needs the Hugging Face hub, which is
    unreachable ({reason}); {fix}`."""
    reason = hub_unreachable_reason(offline_variables)
    if reason is not None:
        raise ColaError(f"{resource} needs the Hugging Face hub, which is unreachable ({reason}); {fix}")


@contextlib.contextmanager
def quiet_hub_retries() -> Iterator[None]:
    """Silence the hub libraries' per-retry warnings inside: a failure ends in one ColaError line instead."""
    loggers = [logging.getLogger(name) for name in RETRY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
