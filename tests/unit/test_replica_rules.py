"""When the development replica is copied again rather than caught up (`kit.devservers.replica.copy_afresh`)."""

import pytest

from kit.devservers.replica import copy_afresh


@pytest.mark.parametrize(("behind", "size", "afresh"), [
    (None, 10, True),  # no slot: the WAL it needs may be gone
    (0, 10, False), (10, 10, False), (11, 10, True),
])
def test_a_replica_is_copied_afresh_once_catching_up_would_replay_more_than_the_databases_hold(behind, size, afresh):
    assert copy_afresh(behind, size) is afresh
