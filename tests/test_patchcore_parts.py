"""PatchCore's pieces against slow obvious references."""

import torch

from anomap.methods.patchcore import NearestNeighbors, greedy_coreset


def brute_force_coreset(points, size, start):
    chosen = [start]
    nearest = torch.cdist(points, points[start : start + 1])[:, 0]
    while len(chosen) < size:
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, torch.cdist(points, points[nxt : nxt + 1])[:, 0])
    return chosen


def test_greedy_coreset_matches_brute_force_without_projection():
    points = torch.randn(300, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    chosen = greedy_coreset(points.float(), 30, projection_dim=8, seed=3, show_progress=False)
    expected = brute_force_coreset(points, 30, int(chosen[0]))
    assert chosen.tolist() == expected


def test_coreset_covers_clusters():
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 16, generator=gen) * 20
    points = torch.cat([c + torch.randn(200, 16, generator=gen) for c in centres])
    chosen = greedy_coreset(points, 5, projection_dim=8, seed=0, show_progress=False)
    assert sorted(int(i) // 200 for i in chosen) == [0, 1, 2, 3, 4]


def test_nearest_neighbors_exact_and_chunked(monkeypatch):
    import anomap.methods.patchcore as pc

    monkeypatch.setattr(pc, "_CHUNK_ELEMENTS", 500)
    gen = torch.Generator().manual_seed(2)
    bank, queries = torch.randn(100, 12, generator=gen), torch.randn(37, 12, generator=gen)
    dist, idx = NearestNeighbors(bank).search(queries, 3)
    ref = torch.cdist(queries, bank)
    ref_dist, ref_idx = ref.topk(3, largest=False)
    torch.testing.assert_close(dist, ref_dist, atol=1e-4, rtol=1e-4)
    assert torch.equal(idx, ref_idx)


def test_faiss_backend_agrees():
    import pytest

    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(200, 16, generator=gen), torch.randn(20, 16, generator=gen)
    d1, i1 = NearestNeighbors(bank).search(queries, 2)
    d2, i2 = NearestNeighbors(bank, "faiss").search(queries, 2)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(d1, d2, atol=1e-4, rtol=1e-4)
