"""Unit tests of the Q-head's point readout: the map read under each candidate's point."""

import pytest
import torch

from mtopt.core.config import MTOptConfig
from mtopt.core.networks import ConditionedHead, QNetwork, network_kwargs
from test_networks import CH, SLOTS, images, qnet


def test_point_readout_reads_the_cell_under_the_point_and_blends_between_cells():
    head = qnet(point_readout=True).q_head
    f = torch.randn(2, 64, CH)
    cells = head.cells  # (64, 2) cell centres, row-major from the top-left (x = -1, y = +1)
    torch.testing.assert_close(head.features_at(f, cells[None].expand(2, -1, -1)), f)
    # Halfway between the first two cells of the top row: their mean. Off the table's edge: the edge cell.
    between = ((cells[0] + cells[1]) / 2)[None, None].expand(2, 1, 2)
    torch.testing.assert_close(head.features_at(f, between)[:, 0], (f[:, 0] + f[:, 1]) / 2)
    corner = torch.tensor([[[-1.0, 1.0], [1.0, -1.0]]]).expand(2, -1, -1)
    torch.testing.assert_close(head.features_at(f, corner), f[:, [0, 63]])


def test_point_readout_makes_the_logit_depend_on_the_features_under_the_point():
    """Changing the feature map only at the cell under a candidate moves that candidate's logit
    more with the point readout than the pooled path alone moves it (the pooled path sees the
    change only through its max and mean over all cells)."""
    q = qnet(point_readout=True)
    f = q.tower(images(1)).detach()
    st, tk = torch.zeros(1, 2), torch.tensor([5])
    point = q.q_head.cells[27]
    act = torch.tensor([[[point[0], point[1], 1.0, -1.0]]])
    bumped = f.clone()
    bumped[0, :, 3, 3] += 5.0  # cell 27 = row 3, column 3
    with torch.no_grad():
        full = (q.head(bumped, st, act, tk) - q.head(f, st, act, tk)).abs().item()
        readout = q.q_head.readout
        q.q_head.point_readout = False
        pooled = (q.head(bumped, st, act, tk) - q.head(f, st, act, tk)).abs().item()
    assert readout is not None and full != pooled


def test_network_kwargs_read_labels_from_before_the_point_readout():
    old = '{"num_task_slots": 32, "image_size": 64, "channels": 8, "multi_head": false}'
    assert network_kwargs(old)["point_readout"] is False
    assert not QNetwork(**network_kwargs(old)).q_head.point_readout
    assert network_kwargs(old[:-1] + ', "point_readout": true}')["point_readout"] is True
    with pytest.raises(ValueError):
        network_kwargs("[1, 2]")
    assert QNetwork(SLOTS).q_head.point_readout  # the constructor's default is the config's
    assert MTOptConfig().point_readout


def test_point_readout_needs_a_spatial_head():
    with pytest.raises(ValueError, match="point_readout"):
        ConditionedHead(CH, 4, point_readout=True)
