"""Reaching the Hugging Face Hub: find out once, quickly, whether it answers, so that an id that is neither a local
folder nor reachable fails at once instead of after minutes of download retries."""

import functools
import socket
import urllib.request
from urllib.parse import urlsplit

from huggingface_hub import constants, try_to_load_from_cache


HUB_PROBE_TIMEOUT_S = 5.0
"""How long to wait for the Hub's server to accept a connection before calling it unreachable."""
DEFAULT_PORTS = {"https": 443, "http": 80}
CONFIG_NAME = "config.json"


class HubUnreachableError(OSError):
    """The Hub cannot be reached and the model is not in the local cache."""


@functools.lru_cache(maxsize=None)
def hub_reachable(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub's server (`HF_ENDPOINT`, default https://huggingface.co), or the proxy set for it, accepts a
    TCP connection within `timeout` seconds. Checked once per endpoint and process."""
    try:
        with socket.create_connection(_first_hop(endpoint or constants.ENDPOINT), timeout):
            return True
    except OSError:
        return False


def _first_hop(url: str) -> tuple[str, int]:
    """(host, port) a connection to `url` goes to first: its proxy when one is set for it (`HTTPS_PROXY`, ...)."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme, DEFAULT_PORTS["https"])


def hub_download_kwargs(model_id: str) -> dict[str, bool]:
    """`from_pretrained` kwargs for a Hub model id: none when the Hub answers (or `HF_HUB_OFFLINE=1` already keeps
    it off), `local_files_only=True` when it does not but the model is cached; `HubUnreachableError` otherwise."""
    if constants.HF_HUB_OFFLINE or hub_reachable():
        return {}
    if isinstance(try_to_load_from_cache(model_id, CONFIG_NAME), str):
        return {"local_files_only": True}
    raise HubUnreachableError(
        f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached, and {model_id!r} is neither a local folder "
        "nor in the local cache; check the network or pass a model folder (HF_HUB_OFFLINE=1 skips the Hub and uses "
        "cached models only)"
    )
