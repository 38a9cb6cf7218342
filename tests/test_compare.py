"""The comparison harness end to end on a tiny grid (2 strategies x 2 seeds, 24 embedded pairs), resume included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_rows

from trl_mars.cli.compare import CompareArguments, parse_variants, run_grid

ROOT = Path(__file__).resolve().parents[1]


def _grid_data(path: Path) -> str:
    rows = []
    for i, row in enumerate(tiny_rows(24)):
        rows.append({**row, "prompt": f"{row['prompt']} (case {i // 2})", "prompt_id": i // 2,
                     "chosen_generator": "gpt-3.5" if i % 3 else "tulu"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _args(tmp_path, **overrides):
    from trl import ModelConfig

    from trl_mars import MarsRewardConfig
    from trl_mars.training.config import PACKAGED_MINILM

    compare = CompareArguments(datasets=[_grid_data(tmp_path / "pairs.jsonl")], strategies=["none"], seeds=[1, 2],
                               variants={"uniform_half": {"mars_strategy": "uniform", "mars_budget_ratio": 0.5,
                                                         "mars_warmup_epochs": 0}},  # a round in 1 epoch
                               eval_fraction=0.25)
    training = dict(output_dir=str(tmp_path / "grid"), num_train_epochs=1, per_device_train_batch_size=8,
                    learning_rate=5e-5, max_length=48, save_strategy="no", report_to="none", bf16=False,
                    activation_checkpointing=False, mars_paraphraser="lexical", mars_embedding_model=PACKAGED_MINILM,
                    disable_tqdm=True)
    training.update(overrides)
    return compare, MarsRewardConfig(**training), ModelConfig(model_name_or_path=PACKAGED_MINILM)


def test_parse_variants():
    variants = parse_variants(["none", "mars_abs", "uniform"],
                              {"mars_abs": {"mars_strategy": "mars", "mars_margin_mode": "absolute"},
                               "lora": {"mars_strategy": "none", "use_peft": True, "lora_r": 16}})
    assert list(variants) == ["none", "mars_abs", "uniform", "lora"]
    assert variants["uniform"] == {"mars_strategy": "uniform"}
    with pytest.raises(ValueError, match="neither a `mars_strategy`"):
        parse_variants(["marz"], None)


@pytest.mark.slow
def test_grid_runs_resumes_and_reproduces_a_cell(tmp_path):
    report = run_grid(*_args(tmp_path))
    grid = tmp_path / "grid"
    assert len(report["computed"]) == 4 and len(report["cells"]) == 4
    cells = report["cells"]
    # One split for the whole grid: every cell trained and was scored on the same pairs.
    assert len({c["settings"]["train_fingerprint"] for c in cells}) == 1
    assert len({c["settings"]["eval_fingerprint"] for c in cells}) == 1
    dataset = report["datasets"]["pairs"]
    assert dataset["n_eval"] == 6 and dataset["n_train"] == 18  # 3 of 12 prompt_id groups held out
    uniform = [c for c in cells if c["variant"] == "uniform_half"]
    assert all(c["n_train_final"] == 18 + 9 for c in uniform)  # budget 0.5 x 18 added in round 1
    assert all(c["rounds"][0]["synthetic_pairs_added"] == 9 for c in uniform)
    assert dataset["majority_baseline"]["label"] == "gpt-3.5"
    table = (grid / "results.md").read_text()
    assert "| none |" in table and "| uniform_half |" in table and "**" in table and "majority baseline" in table
    assert (grid / "plots" / "accuracy.png").stat().st_size > 5000
    assert (grid / "plots" / "margins_by_round.png").stat().st_size > 5000
    assert (grid / "cache").is_dir()  # the one cache of the grid

    # Rerun: nothing is recomputed.
    results = sorted(grid.glob("cells/*/*/seed_*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    again = run_grid(*_args(tmp_path))
    assert again["computed"] == [] and [p.stat().st_mtime_ns for p in results] == stamps

    # A lost cell is recomputed alone, and in-process training reproduces it exactly after other cells ran.
    lost = grid / "cells" / "pairs" / "uniform_half" / "seed_1" / "result.json"
    before = json.loads(lost.read_text())
    lost.unlink()
    third = run_grid(*_args(tmp_path))
    assert third["computed"] == ["pairs / uniform_half / seed 1"]
    after = json.loads(lost.read_text())
    assert after["eval_margins"] == pytest.approx(before["eval_margins"], abs=1e-4)

    # Other settings in the same folder: refused before anything trains.
    with pytest.raises(ValueError, match="learning_rate"):
        run_grid(*_args(tmp_path, learning_rate=1e-4))


def test_unknown_override_fails_before_training(tmp_path):
    compare, training, model = _args(tmp_path)
    compare.variants = {"typo": {"mars_strategy": "mars", "mars_taus": 2.0}}
    with pytest.raises(ValueError, match="unknown field"):
        run_grid(compare, training, model)
    assert not (tmp_path / "grid" / "cells").exists()


def test_recipe_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "compare.py"), "--help"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--datasets", "--strategies", "--seeds", "--variants", "--group_by", "--mars_tau"):
        assert flag in result.stdout


def test_a_setting_added_after_a_cell_ran_keeps_the_cell_when_left_at_its_default(tmp_path):
    from trl_mars.cli.compare import Cell, GridDataset, load_finished

    compare, training, _ = _args(tmp_path)
    dataset = GridDataset(key="pairs", name="pairs.jsonl", train=None, evaluation=None, majority=None,
                          train_fingerprint="t", eval_fingerprint="e")
    cell = Cell(dataset, "none", 1, {}, training, "model", None)
    cell.directory.mkdir(parents=True)
    recorded = cell.settings()
    del recorded["mars_max_budget_share"]  # as if the field did not exist when the cell ran
    (cell.directory / "result.json").write_text(json.dumps({"accuracy": 0.5, "settings": recorded}))
    assert load_finished(cell)["accuracy"] == 0.5
    # the same missing field at a value other than its default is a different setting: not reused
    cell.args.mars_max_budget_share = 4.0
    with pytest.raises(ValueError, match="mars_max_budget_share"):
        load_finished(cell)


def test_paired_difference_by_hand():
    """Seed-paired accuracy differences and the per-pair standard error, computed by hand (a tie is wrong)."""
    from trl_mars.cli.compare import _paired_text, paired_difference

    plain = [{"seed": 1, "accuracy": 0.5, "eval_margins": [1.0, -1.0, 1.0, -1.0]},
             {"seed": 2, "accuracy": 0.5, "eval_margins": [1.0, 1.0, -1.0, -1.0]}]
    variant = [{"seed": 1, "accuracy": 0.75, "eval_margins": [1.0, 1.0, 1.0, -1.0]},
               {"seed": 2, "accuracy": 0.5, "eval_margins": [1.0, 1.0, 0.0, -1.0]},
               {"seed": 3, "accuracy": 0.9, "eval_margins": [1.0, 1.0, 1.0, 1.0]}]  # no plain seed 3: left out
    paired = paired_difference(variant, plain)
    assert paired["seeds"] == [1, 2] and paired["wins"] == 1
    assert paired["per_seed"] == pytest.approx([0.25, 0.0])
    assert paired["mean"] == pytest.approx(0.125) and paired["std"] == pytest.approx(0.25 / 2 ** 0.5)
    # per pair, mean over seeds of [variant right] - [plain right]: [0, 0.5, 0, 0]; sd (ddof=1) 0.25, se 0.25 / 2
    assert paired["n_pairs"] == 4 and paired["pair_mean"] == pytest.approx(0.125)
    assert paired["pair_se"] == pytest.approx(0.125)
    assert (paired["gained"], paired["lost"]) == (1, 0)
    assert _paired_text(paired) == "+12.5 ± 17.7 [± 12.5] (1/2)"
    assert paired_difference(variant, [{"seed": 7, "accuracy": 0.5}]) is None


def test_fold_splits_hold_every_row_or_group_out_once():
    from datasets import Dataset

    from trl_mars.data.preferences import fold_splits

    data = Dataset.from_list([{**row, "row": i, "prompt_id": i // 3} for i, row in enumerate(tiny_rows(20))])
    splits = fold_splits(data, 3, seed=0)
    held = [row for _, evaluation in splits for row in evaluation["row"]]
    assert sorted(held) == list(range(20))  # each row held out exactly once
    assert sorted(len(e) for _, e in splits) == [6, 7, 7]
    for train, evaluation in splits:
        assert sorted(list(train["row"]) + list(evaluation["row"])) == list(range(20))
    grouped = fold_splits(data, 3, seed=0, group_by="prompt_id")  # 7 groups: 3, 2, 2 per fold
    for train, evaluation in grouped:
        assert not set(train["prompt_id"]) & set(evaluation["prompt_id"])
    assert sorted(len(set(e["prompt_id"])) for _, e in grouped) == [2, 2, 3]
    assert [list(e["row"]) for _, e in fold_splits(data, 3, seed=0)] == [list(e["row"]) for _, e in splits]  # seeded
    with pytest.raises(ValueError, match="folds must be"):
        fold_splits(data, 1)
    with pytest.raises(ValueError, match="at least 30 rows"):
        fold_splits(data, 30)


def test_grid_with_folds_scores_every_pair_once(tmp_path):
    """2-fold cross-validation of plain training on 24 pairs (12 prompt groups): two trainings per seed, and the
    pooled row's accuracy is computed over the 24 concatenated held-out margins."""
    compare, training, model = _args(tmp_path)
    compare.folds, compare.seeds, compare.variants = 2, [1], {}
    report = run_grid(compare, training, model)
    assert sorted(report["computed"]) == ["pairs/fold_1 / none / seed 1", "pairs/fold_2 / none / seed 1"]
    pooled = report["datasets"]["pairs"]
    assert pooled["n_eval"] == 24 and pooled["folds"] == 2
    cell = report["cells"][0]
    folds = sorted(report["fold_cells"], key=lambda r: r["dataset"])
    assert [len(f["eval_margins"]) for f in folds] == [12, 12]
    margins = folds[0]["eval_margins"] + folds[1]["eval_margins"]
    assert cell["eval_margins"] == margins
    assert cell["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 24)
    assert cell["per_fold_accuracy"] == [folds[0]["accuracy"], folds[1]["accuracy"]]
    assert "2-fold cross-validation" in (tmp_path / "grid" / "results.md").read_text()


def test_run_folds_splits_one_cross_validation_over_two_jobs(tmp_path):
    """Two jobs over one output folder, each training one of two folds: the first reports nothing pooled (fold 2 is
    missing), the second reuses fold 1 and pools both. A fold number outside 1..k fails before any training."""
    compare, training, model = _args(tmp_path)
    compare.folds, compare.seeds, compare.variants, compare.run_folds = 2, [1], {}, [1]
    first = run_grid(compare, training, model)
    assert first["computed"] == ["pairs/fold_1 / none / seed 1"]
    assert first["not_finished"] == ["pairs/fold_2 / none / seed 1"] and first["cells"] == []
    compare.run_folds = [2]
    second = run_grid(compare, training, model)
    assert second["computed"] == ["pairs/fold_2 / none / seed 1"] and second["not_finished"] == []
    assert second["datasets"]["pairs"]["n_eval"] == 24 and len(second["cells"][0]["eval_margins"]) == 24
    compare.run_folds = [3]
    with pytest.raises(ValueError, match="--run_folds .*from 1 to --folds"):
        run_grid(compare, training, model)


def test_report_only_trains_nothing_and_lists_what_is_missing(tmp_path):
    compare, training, model = _args(tmp_path)
    compare.report_only = True
    report = run_grid(compare, training, model)
    assert report["computed"] == [] and report["cells"] == []
    assert sorted(report["not_finished"]) == ["pairs / none / seed 1", "pairs / none / seed 2",
                                              "pairs / uniform_half / seed 1", "pairs / uniform_half / seed 2"]
    assert not list((tmp_path / "grid").glob("cells/*/*/seed_*/result.json"))
    assert (tmp_path / "grid" / "results.md").is_file()


@pytest.mark.parametrize("config", sorted((ROOT / "recipes" / "compare").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_grids_build_every_cell(config, tmp_path):
    """Each grid in recipes/compare parses and every variant x seed makes a valid config: a typo in a grid fails
    here, not hours into a run."""
    from trl import ModelConfig, TrlParser

    from trl_mars import MarsRewardConfig
    from trl_mars.cli.compare import COMPARE_DEFAULTS, GridDataset, build_cells

    parser = TrlParser((CompareArguments, MarsRewardConfig, ModelConfig))
    parser.set_defaults_with_config(**COMPARE_DEFAULTS)
    compare, training, model = parser.parse_args_and_config(
        args=["--config", str(config), "--output_dir", str(tmp_path / "grid")])
    dataset = GridDataset("pairs", "pairs", None, None, None, "", "")
    cells = build_cells([dataset], compare, training, model)
    variants = parse_variants(compare.strategies, compare.variants)
    assert len(cells) == len(variants) * len(compare.seeds)
    for cell in cells:  # each variant's config overrides reach its cells (model/LoRA overrides live elsewhere)
        for field, value in cell.overrides.items():
            if hasattr(cell.args, field):
                assert getattr(cell.args, field) == value, (cell.variant, field)
