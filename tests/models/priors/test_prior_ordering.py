import pytest
import torch

from medgen_cli.models.priors.ordering import ORDERINGS, _coords, make_ordering


CASES = [(g, k) for g in [(4, 4), (3, 5), (2, 3, 4)] for k in ORDERINGS if not (k == "hilbert" and len(g) != 2)]


@pytest.mark.parametrize("grid_shape, kind", CASES)
def test_orderings_are_permutations_with_inverses(grid_shape, kind):
    perm, inv = make_ordering(grid_shape, kind, seed=3)
    n = perm.numel()
    assert sorted(perm.tolist()) == list(range(n))
    assert torch.equal(perm[inv], torch.arange(n)) and torch.equal(inv[perm], torch.arange(n))
    flat = torch.randn(2, n)
    assert torch.equal(flat[:, perm][:, inv], flat)


def test_raster_is_identity_and_random_depends_on_seed():
    assert torch.equal(make_ordering((3, 3))[0], torch.arange(9))
    assert torch.equal(make_ordering((3, 3), "random", 1)[0], make_ordering((3, 3), "random", 1)[0])
    assert not torch.equal(make_ordering((3, 3), "random", 1)[0], make_ordering((3, 3), "random", 2)[0])


@pytest.mark.parametrize("grid_shape, kind", [((4, 4), "snake"), ((2, 3, 4), "snake"), ((8, 8), "hilbert")])
def test_space_filling_orders_step_to_neighbours(grid_shape, kind):
    perm, _ = make_ordering(grid_shape, kind)
    coords = _coords(grid_shape)[perm]
    assert (coords.diff(dim=0).abs().sum(1) == 1).all()


def test_zigzag_2d():
    assert make_ordering((3, 3), "zigzag")[0].tolist() == [0, 1, 3, 6, 4, 2, 5, 7, 8]


@pytest.mark.parametrize("args", [((4, 4), "spiral"), ((2, 2, 2), "hilbert"), ((0, 4), "raster"), ((), "raster")])
def test_bad_arguments_raise(args):
    with pytest.raises(ValueError):
        make_ordering(*args)
