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


# --- partners from the dataset, a shard bank, or a render -------------------------------------


def _store(N=400, seed=0, bins=3, L=4):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (N, 4, 4, 1), dtype=torch.uint8, generator=g)
    images[:, 0, 0, 0] = torch.arange(N) % 256  # rows told apart by two pixels
    images[:, 0, 1, 0] = torch.arange(N) // 256
    labels = torch.randint(0, bins, (N, L), generator=g)
    return images, labels


def _row_of(img_CHW):
    px = (img_CHW[0, 0, :2] * 255).round().long()
    return int(px[0] + 256 * px[1])


LABELS4 = ["yaw", "pitch", "mouth", "skin"]  # "skin": a nuisance label no partition lists


@pytest.mark.parametrize("match_nuisance", [False, True])
def test_dataset_partners_share_the_partition_bins_never_self(match_nuisance):
    from gvae_dist.data.partners import DatasetPartners

    images, labels = _store()
    plan = PairingPlan(_spec(), LABELS4, probs=(0, 1, 0), match_nuisance=match_nuisance)
    src = DatasetPartners(images, labels, plan.sets, "cpu")
    ids = torch.arange(0, 400, 3)
    x = images[ids].permute(0, 3, 1, 2).float() / 255
    pairs = make_pairs(x, labels[ids], plan, torch.Generator().manual_seed(0), src, ids)
    assert pairs.found == 1 and (pairs.kind_B == SHARED).all()
    assert pairs.drawn_K.sum() == len(ids) and torch.equal(pairs.found_K, pairs.drawn_K)
    skin_same = []
    for b, i in enumerate(ids.tolist()):
        j = _row_of(pairs.target_BCHW[b])
        cols = [0, 1] if pairs.partition_B[b] == 0 else [2]
        assert j != i and torch.equal(labels[j, cols], labels[i, cols])
        skin_same.append(bool(labels[j, 3] == labels[i, 3]))
    # with match_nuisance the nuisance label always agrees; without, about 1 in 3 times
    assert all(skin_same) if match_nuisance else sum(skin_same) < 0.6 * len(skin_same)


def test_partner_index_draws_uniformly_and_reports_found_rate():
    from gvae_dist.data.partners import PartnerIndex

    labels = torch.tensor([[0], [0], [0], [1], [2], [2]])
    index = PartnerIndex([[0]], [0], [3])
    index.build(labels)
    assert index.group_sizes().tolist() == [[3, 3, 3, 1, 2, 2]]
    q = torch.tensor([[0]] * 3000 + [[1], [2], [5]])
    own = torch.tensor([0] * 3000 + [3, 4, -1])
    row, found = index.draw(q, torch.zeros(len(q), dtype=torch.long), own, torch.Generator().manual_seed(0))
    counts = torch.bincount(row[:3000], minlength=3)
    assert counts[0] == 0 and abs(counts[1] - 1500) < 150  # self excluded, the other two even
    assert found[:3000].all() and found[3001] and row[3001] == 5
    assert not found[3000] and not found[3002]  # alone in its bin / a label outside the range


def test_match_one_sets_and_low_found_rate_falls_back():
    from gvae_dist.data.partners import DatasetPartners

    images, labels = _store(N=30, bins=8)
    plan_all = PairingPlan(_spec(), LABELS4, probs=(0, 1, 0), match="all")
    plan_one = PairingPlan(_spec(), LABELS4, probs=(0, 1, 0), match="one")
    assert plan_all.sets == [[0, 1], [2]] and plan_one.sets == [[0], [1], [2]]
    found = {}
    for name, plan in (("all", plan_all), ("one", plan_one)):
        src = DatasetPartners(images, labels, plan.sets, "cpu")
        ids = torch.arange(30)
        x = images.permute(0, 3, 1, 2).float() / 255
        pairs = make_pairs(x, labels, plan, torch.Generator().manual_seed(0), src, ids)
        found[name] = pairs.found_K / pairs.drawn_K
        lone = pairs.kind_B == IDENTITY  # no partner: identity pair, target = input
        assert torch.equal(pairs.target_BCHW[lone], x[lone])
    # 64 pose bins over 30 samples: few pose partners with match all, many with match one
    assert found["all"][0] < 0.6 < found["one"][0]


def test_shard_bank_partners_two_ranks(tmp_path):
    """Two ranks of a real shard loader, each drawing partners from its own bank."""
    from gvae_dist.config import DataConfig, config_from_dict
    from gvae_dist.data.importers import build_dataset
    from gvae_dist.data.partners import BankPartners, build_partners
    from gvae_dist.data.stream import build_stream_loader

    out = tmp_path / "shards"
    build_dataset("faces", out, DataConfig(image_size=32), num=96, shard_size=32, progress=False)
    cfg = config_from_dict(
        {
            "data": {"source": "shards", "path": str(out), "image_size": 32, "backend": "webdataset", "num_workers": 0},
            "pairing": {"bank_size": 40, "match": "one"},
        }
    )
    for rank in (0, 1):
        loader = build_stream_loader(cfg, rank, 2, torch.device("cpu"), 16)
        plan = PairingPlan.from_config(cfg, loader.info.label_names)
        bank = build_partners(cfg, loader, plan, "cpu")
        assert isinstance(bank, BankPartners)
        gen, found, seen, seen_labels = torch.Generator().manual_seed(rank), [], {}, {}
        for _ in range(4):
            batch = next(loader)
            for k, img, lab in zip(batch.keys, batch.image, batch.labels):
                seen[k], seen_labels[k] = img, lab
            own = bank.observe(batch)
            pairs = make_pairs(batch.image, batch.labels, plan, gen, bank, own)
            found.append(pairs.found.item())
            for b in torch.nonzero(pairs.kind_B == SHARED).flatten().tolist():
                src = [k for k, img in seen.items() if torch.equal(img, pairs.target_BCHW[b])]
                assert src and batch.keys[b] not in src  # a sample this rank decoded, not itself
                part = plan.spec.partitions[int(pairs.partition_B[b])]
                cols = [loader.info.label_names.index(f) for f in part.factors]
                assert any((seen_labels[k][cols] == batch.labels[b, cols]).any() for k in src)
        assert bank.filled == 40 and 0.5 < sum(found) / len(found) <= 1
        loader.close()


def test_rendered_partner_keeps_all_but_the_other_partitions_factors():
    from gvae_dist.data.partners import RenderedPartners
    from gvae_dist.data.synthetic import FACTOR_SPECS, generate

    names = [s.name for s in FACTOR_SPECS["faces"]]
    spec = PartitionSpec([("pose", 2, ("yaw", "pitch")), ("expression", 2, ("mouth",)), ("rest", 1, ())], 5)
    plan = PairingPlan(spec, names, probs=(0, 1, 0))
    cols = [[names.index("yaw"), names.index("pitch")], [names.index("mouth")]]
    src = RenderedPartners("faces", 32, cols, plan.set_owner_T, "cpu")
    data = generate("faces", 32, seed=0, image_size=32)
    factors = torch.from_numpy(data.factors)
    set_B = torch.arange(32) % 2
    new = src.partner_factors(factors, plan.set_owner_T[set_B], torch.Generator().manual_seed(0))
    changed = (new != factors.double()).float().mean(0)
    pose, expr = cols
    other = [i for i in range(len(names)) if i not in pose + expr]
    assert (new[set_B == 0][:, pose] == factors.double()[set_B == 0][:, pose]).all()
    assert (new[set_B == 0][:, expr] != factors.double()[set_B == 0][:, expr]).all()
    assert (new[set_B == 1][:, pose] != factors.double()[set_B == 1][:, pose]).all()
    assert changed[other].sum() == 0  # nuisance factors identical
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    pairs = make_pairs(
        images,
        torch.zeros(32, len(names), dtype=torch.long),
        plan,
        torch.Generator().manual_seed(0),
        src,
        None,
        factors,
    )
    assert pairs.found == 1 and (pairs.kind_B == SHARED).all()
    assert not torch.equal(pairs.target_BCHW, images)
