"""Pairing: targets and gate masks per example, vectorised and seeded."""

import pytest
import torch

from gvae_dist.data.pairing import IDENTITY, SHARED, TRANSFORM, PairingPlan, make_pairs
from gvae_dist.gate import PartitionSpec

LABELS = ["yaw", "pitch", "mouth"]


def _spec():
    return PartitionSpec([("pose", 2, ("yaw", "pitch")), ("expression", 2, ("mouth",)), ("rest", 1, ())], 5)


def _batch(B=64, seed=0, bins=2):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 1, 8, 8, generator=g)
    labels = torch.randint(0, bins, (B, len(LABELS)), generator=g)
    return images, labels


def test_shared_factor_partner_shares_the_partition_labels_and_mask_is_that_partition():
    images, labels = _batch()
    plan = PairingPlan(_spec(), LABELS, probs=(0, 1, 0))
    pairs = make_pairs(images, labels, plan, torch.Generator().manual_seed(1))
    shared = pairs.kind_B == SHARED
    assert shared.float().mean() > 0.9 and 0.9 < pairs.found <= 1
    for b in torch.nonzero(shared).flatten().tolist():
        # find which example the target is (images are unique random)
        src = [j for j in range(64) if torch.equal(images[j], pairs.target_BCHW[b])]
        assert len(src) == 1 and src[0] != b
        part = pairs.partition_B[b].item()
        cols = [0, 1] if part == 0 else [2]
        assert torch.equal(labels[src[0], cols], labels[b, cols])
        expected = torch.zeros(5)
        expected[[0, 1] if part == 0 else [2, 3]] = 1
        assert torch.equal(pairs.mask_BD[b], expected)


def test_no_partner_falls_back_to_identity_and_is_reported():
    images, _ = _batch(B=8)
    labels = torch.arange(8).unsqueeze(1).repeat(1, 3)  # every example unique: nobody matches
    plan = PairingPlan(_spec(), LABELS, probs=(0, 1, 0))
    pairs = make_pairs(images, labels, plan, torch.Generator().manual_seed(0))
    assert pairs.found.item() == 0.0
    assert (pairs.kind_B == IDENTITY).all()
    assert torch.equal(pairs.target_BCHW, images)
    assert (pairs.mask_BD == 1).all()


def test_match_one_finds_more_partners_than_match_all():
    images, labels = _batch(B=16, bins=8)
    found = {}
    for match in ("all", "one"):
        plan = PairingPlan(_spec(), LABELS, probs=(0, 1, 0), match=match)
        found[match] = make_pairs(images, labels, plan, torch.Generator().manual_seed(0)).found.item()
    assert found["one"] > found["all"]


def test_transform_pairs_blur_and_mask_rest():
    images, labels = _batch(B=16)
    plan = PairingPlan(_spec(), LABELS, probs=(0, 0, 1), transform_partition="rest", blur_sigma=1.0)
    pairs = make_pairs(images, labels, plan, torch.Generator().manual_seed(0))
    assert (pairs.kind_B == TRANSFORM).all()
    assert pairs.target_BCHW.shape == images.shape
    # a blur keeps the mean roughly and lowers the variance
    assert pairs.target_BCHW.var() < 0.5 * images.var()
    assert torch.equal(pairs.mask_BD, torch.tensor([[0.0, 0, 0, 0, 1]]).expand(16, 5))
    hflip = PairingPlan(_spec(), LABELS, probs=(0, 0, 1), transform_kind="hflip")
    assert torch.equal(make_pairs(images, labels, hflip, torch.Generator()).target_BCHW, images.flip(-1))


def test_ungated_has_all_ones_masks_and_identical_targets():
    images, labels = _batch()
    gated = PairingPlan(_spec(), LABELS, probs=(0.3, 0.7, 0))
    ungated = PairingPlan(_spec(), LABELS, probs=(0.3, 0.7, 0), gate=False)
    a = make_pairs(images, labels, gated, torch.Generator().manual_seed(3))
    b = make_pairs(images, labels, ungated, torch.Generator().manual_seed(3))
    assert torch.equal(a.target_BCHW, b.target_BCHW) and torch.equal(a.kind_B, b.kind_B)
    assert (b.mask_BD == 1).all() and (a.mask_BD == 0).any()


def test_seeded_reproducible_and_mixture_proportions():
    images, labels = _batch(B=512)
    plan = PairingPlan(_spec(), LABELS, probs=(0.25, 0.5, 0.25), identity_partitions=["rest"])
    a = make_pairs(images, labels, plan, torch.Generator().manual_seed(7))
    b = make_pairs(images, labels, plan, torch.Generator().manual_seed(7))
    c = make_pairs(images, labels, plan, torch.Generator().manual_seed(8))
    assert torch.equal(a.kind_B, b.kind_B) and torch.equal(a.target_BCHW, b.target_BCHW)
    assert not torch.equal(a.kind_B, c.kind_B)
    share = torch.bincount(a.kind_B, minlength=3).float() / 512
    assert abs(share[TRANSFORM] - 0.25) < 0.07 and abs(share[SHARED] + share[IDENTITY] - 0.75) < 0.07
    ident = a.kind_B == IDENTITY
    assert torch.equal(a.mask_BD[ident], torch.tensor([0.0, 0, 0, 0, 1]).expand(int(ident.sum()), 5))


def test_bad_factor_name_is_reported():
    spec = PartitionSpec([("pose", 2, ("yaw", "nose")), ("rest", 1, ())], 3)
    with pytest.raises(ValueError, match="nose"):
        PairingPlan(spec, LABELS)
