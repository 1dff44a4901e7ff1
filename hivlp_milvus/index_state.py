"""The build state of a collection's ``vec_low`` index, and its rebuild when Milvus failed to build it.

Milvus builds an index when segments are sealed, not when it is created: a server can accept a GPU
index on an empty collection (the profile probe, the create) and fail to build it once data
arrives. Then ``vec_low`` is rebuilt with the profile's fallback (``gpu`` -> ``cpu``, same
``nlist``) and the collection's properties record the profile it now has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hivlp_milvus.errors import ProfileError
from hivlp_milvus.profiles import IndexProfile, fallback_profile
from hivlp_milvus.schema import profile_properties

logger = logging.getLogger(__name__)


def low_index_state(client: Any, name: str) -> str:
    """Milvus' state of the ``vec_low`` index (``"Finished"``, ``"InProgress"``, ``"Failed"``, ...)."""
    return str((client.describe_index(name, "vec_low") or {}).get("state", ""))


def check_low_index(
    client: Any,
    name: str,
    profile: IndexProfile,
    *,
    lite: bool,
    rows: Callable[[], int | None],
    wait_s: float = 0.0,
    fallback: bool = True,
) -> tuple[str, IndexProfile]:
    """The index state after waiting up to ``wait_s`` while it builds, and the profile it has now.

    A failed build is rebuilt with ``profile``'s fallback (keeping its ``nlist``, else sized for
    ``rows()`` rows), recorded in the collection's properties.

    Raises:
        ProfileError: the build failed and there is no fallback (or ``fallback`` is false).
    """
    deadline = time.monotonic() + wait_s
    while (state := low_index_state(client, name)) == "InProgress" and time.monotonic() < deadline:
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.05)))
    if state != "Failed":
        return state, profile
    if not (fallback and profile.fallback):
        raise ProfileError(
            f"Milvus failed to build the {profile.low.index_type} index of collection {name!r} "
            f"(profile {profile.tag}); re-create it with another profile (e.g. profile='cpu')"
        )
    new = fallback_profile(profile, rows())
    logger.warning(
        "Milvus failed to build the %s index of collection %r; rebuilding vec_low with profile %s",
        profile.low.index_type,
        name,
        new.tag,
    )
    client.release_collection(name)
    client.drop_index(name, "vec_low")
    client.create_index(name, new.index_params(lite=lite, fields=("vec_low",)))
    client.alter_collection_properties(name, properties=profile_properties(new))
    client.load_collection(name)
    return low_index_state(client, name), new
