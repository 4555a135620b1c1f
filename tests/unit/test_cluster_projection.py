"""The cluster projection's arithmetic (benchmarks/cluster_projection.py, docs/performance.md §7)."""
from benchmarks.cluster_projection import MEASURED_SAMPLES, MEASURED_STEP_S, crossover_gpus, parse_args, project


def test_one_gpu_gives_the_measured_rate_at_the_papers_recipe():
    """performance-gpu.md: 32.6 ms a sample, 2000 x 8 samples a concept -> 6.9 concepts per GPU-hour."""
    row = project(parse_args(["--engine", "torch", "--gpus", "1", "--share", "16"]), 1)
    assert row["comm_ms"] == 0
    assert abs(row["step_s"] - MEASURED_STEP_S["torch"] * 16 / MEASURED_SAMPLES) < 1e-9
    assert abs(row["concepts_per_gpu_hour"] - 6.91) < 0.01


def test_the_pack_grows_with_the_cluster_and_the_reduction_with_the_pack():
    args = parse_args([])
    rows = {g: project(args, g) for g in (8, 64, 512)}
    assert [rows[g]["pack"] for g in (8, 64, 512)] == [16, 128, 1024]  # share 16 x W / batch 8
    # 1,024 concepts x 34 rows x 3,584 x 4 bytes
    assert abs(rows[512]["comm_mb"] - 1024 * 34 * 3584 * 4 / 1e6) < 1e-6
    assert rows[8]["comm_share"] < rows[64]["comm_share"] < rows[512]["comm_share"] < 0.05
    assert project(args, crossover_gpus(args))["comm_share"] >= 0.5
