"""Studies over folds, seeds and sweeps; budget solving; reports from logs."""

import csv
import json
import os
import pathlib
import shutil

import pytest

from mini_datasets import make_esc50
from recipe_utils import REPO
from speechbrain_petl.studies import budget, report, study
from speechbrain_petl.studies.paper import SUFFIXES
from speechbrain_petl.studies.results import is_finished

ESC50 = REPO / "recipes" / "ESC50" / "PETL" / "hparams"


@pytest.fixture(scope="module")
def study_root(tmp_path_factory, tiny_ast_dir):
    """Five short real runs: a kernel sweep, two folds of LoRA, one few-shot run."""
    with pytest.MonkeyPatch.context() as patch:
        # the runs are subprocesses started in the recipe folder
        patch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        yield from _run_study(tmp_path_factory, tiny_ast_dir)


def _run_study(tmp_path_factory, tiny_ast_dir):
    root = tmp_path_factory.mktemp("study")
    data = make_esc50(root / "ESC-50-master")
    common = [
        f"--output_root={root / 'runs'}",
        f"--data_folder={data}",
        f"--backbone_source={tiny_ast_dir}",
        "--num_workers=0",
        "--device=cpu",
        "--debug",
        "--debug_persistently",
    ]
    study.main([str(ESC50 / "conformer_esc50.yaml"), "--folds=1", "--sweep=kernel_size:1,3", *common])
    study.main([str(ESC50 / "lora_esc50.yaml"), "--folds=1,2", "--seeds=7", *common])
    study.main([str(ESC50 / "conformer_esc50.yaml"), "--folds=1", "--few_shot=2",
                f"--output_root={root / 'fewshot'}", *common[1:]])
    yield root, common


def _runs(root):
    return sorted(p.parent for p in pathlib.Path(root).rglob("run.json"))


def test_every_planned_run_finished_in_its_own_folder(study_root):
    root, _ = study_root
    folders = _runs(root)
    assert len(folders) == 5
    names = {str(f.relative_to(root)) for f in folders}
    assert "runs/conformer_esc50/kernel_size-1/fold1" in names
    assert "runs/lora_esc50/default/fold2_seed7" in names
    for folder in folders:
        assert (folder / "test_predictions.csv").is_file() and (folder / "params.json").is_file()
    hparams = (root / "runs/conformer_esc50/kernel_size-3/fold1/hyperparams.yaml").read_text()
    assert "kernel_size: 3" in hparams
    # what each run is and that it finished: recorded, not guessed from names
    lora = root / "runs/lora_esc50/default/fold1_seed7"
    planned, record = (json.loads((lora / name).read_text()) for name in ("run.json", "params.json"))
    assert (planned["dataset"], planned["method"]) == ("ESC50", "lora")
    assert (record["dataset"], record["method"], record["finished"]) == ("ESC50", "lora", True)
    assert record["petl"] > 0


def test_finished_runs_are_skipped_and_unfinished_ones_resumed(study_root, capsys):
    root, common = study_root
    lora = root / "runs/lora_esc50/default"
    stamp = (lora / "fold1_seed7" / "test_predictions.csv").stat().st_mtime
    (lora / "fold2_seed7" / "test_predictions.csv").unlink()  # as if killed before testing
    capsys.readouterr()
    study.main([str(ESC50 / "lora_esc50.yaml"), "--folds=1,2", "--seeds=7", *common])
    out = capsys.readouterr().out
    assert "[1/2] finished already" in out and "[2/2] " + str(lora / "fold2_seed7") in out
    assert (lora / "fold1_seed7" / "test_predictions.csv").stat().st_mtime == stamp
    assert (lora / "fold2_seed7" / "test_predictions.csv").is_file()
    assert "over 2/2 runs" in out and "±" in out


def test_report_from_real_runs(study_root, tmp_path):
    root, _ = study_root
    report.main([str(root), f"--output={tmp_path}"])
    tables = (tmp_path / "tables.md").read_text()
    accs = []
    for fold in (1, 2):
        with open(root / f"runs/lora_esc50/default/fold{fold}_seed7/test_predictions.csv") as fin:
            rows = list(csv.DictReader(fin))
        accs.append(100 * sum(r["target"] == r["prediction"] for r in rows) / len(rows))
    mean = sum(accs) / 2
    lora_row = next(line for line in tables.splitlines() if line.startswith("| lora |"))
    assert f"{mean:.2f} ± " in lora_row and "(2/2) / 86.45" in lora_row
    conformer_row = next(line for line in tables.splitlines() if line.startswith("| conformer |"))
    assert "no run / 88.30" in conformer_row  # sweep runs are not Table 1 cells
    assert "(1/1) / 41.00" in tables  # the 2-shot conformer run, Table 2
    assert (tmp_path / "figure3.png").is_file()
    assert not (tmp_path / "figure2.png").exists()  # no budget sweep was run
    assert len(list((tmp_path / "curves").rglob("*.png"))) == 5
    # tiny --debug runs on a random backbone are flagged, and the footnote says how
    assert lora_row.endswith("(2/2) / 86.45 ⚠1 |") or "(2/2) / 86.45 ⚠" in lora_row
    marker = lora_row.split("(2/2) / 86.45 ")[1].split(" ")[0]
    note = next(line for line in tables.splitlines() if line.startswith(marker + ":"))
    assert "2 of 2 run(s)" in note and "--debug" in note and f"backbone_source={_tiny(root)}" in note
    assert "(recipe: MIT/ast-finetuned-audioset-10-10-0.4593)" in note and "not comparable" in note


def _tiny(root):
    run = json.loads(next(pathlib.Path(root).rglob("run.json")).read_text())
    return next(a.split("=", 1)[1] for a in run["overrides"] if a.startswith("--backbone_source="))


def _fake_run(folder, yaml, dataset, correct, total=10, sweep=None, finished=True, petl=1000, overrides=(),
              method=None, hparams=None, record="current"):
    """A run folder as a study and a recipe run leave it. ``record``:
    "current" (run.json and params.json record dataset, method, finished),
    "old" (made before they were recorded: counts only, old layout), or
    "none" (an old run that wrote no params.json)."""
    folder.mkdir(parents=True)
    suffix = "_" + SUFFIXES.get(dataset, "")
    method = method or (yaml[: -len(suffix)] if yaml.endswith(suffix) else yaml)
    layout = ("PETL", "hparams") if record == "current" else ("hparams",)
    run = {
        "hparams": str(hparams or REPO.joinpath("recipes", dataset, *layout, f"{yaml}.yaml")),
        "yaml": yaml,
        "sweep": sweep or {},
        "fold": 1,
        "seed": 1,
        "overrides": list(overrides),
        "output_folder": str(folder),
    }
    counts = {"petl": petl, "head": 10, "frozen": 5, "total": petl + 15}
    if record == "current":
        run.update(dataset=dataset, method=method)
        counts.update(dataset=dataset, method=method, finished=finished)
    (folder / "run.json").write_text(json.dumps(run))
    if record != "none":
        (folder / "params.json").write_text(json.dumps(counts))
    if not finished:
        return
    (folder / "train_log.txt").write_text(
        "epoch: 1, lr: 1.00e-03 - train loss: 2.0, train acc: 3.00e-01 - valid loss: 1.9, valid acc: 4.00e-01\n"
        "epoch: 2, lr: 5.00e-04 - train loss: 1.5, train acc: 5.00e-01 - valid loss: 1.6, valid acc: 5.00e-01\n"
        + ("Epoch loaded: 2 - test loss: 1.6, test acc: 5.00e-01\n" if record != "current" else "")
    )
    with open(folder / "test_predictions.csv", "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(["ID", "target", "prediction"])
        for i in range(total):
            writer.writerow([f"u{i}", "yes", "yes" if i < correct else "no"])


def test_report_on_hand_made_partial_and_missing_runs(tmp_path):
    root = tmp_path / "logs"
    _fake_run(root / "a", "bottleneck_gsc", "Google-speech-commands", correct=5)
    _fake_run(root / "b", "bottleneck_gsc", "Google-speech-commands", correct=10)
    _fake_run(root / "c", "bottleneck_gsc", "Google-speech-commands", correct=0, finished=False)
    _fake_run(root / "d", "w2v2_linear_iemocap", "IEMOCAP", correct=0, finished=False)
    for i, (rank, correct) in enumerate([(2, 4), (8, 6)]):
        _fake_run(root / f"s{i}", "lora_gsc", "Google-speech-commands", correct=correct,
                  sweep={"lora_rank": str(rank)}, petl=36864 * rank)
    out = tmp_path / "report"
    runs = report.main([str(root), f"--output={out}"])
    assert len(runs) == 6
    tables = (out / "tables.md").read_text()
    row = next(line for line in tables.splitlines() if line.startswith("| bottleneck |"))
    assert row.startswith("| bottleneck | 1,000 |")  # from params.json
    assert "75.00 ± 35.36 (2/3) / 91.33" in row  # mean and std of 50% and 100%; 1 unfinished
    assert "no run / 88.38" in row  # ESC50: nothing there
    assert "⚠" not in row  # default settings: nothing to flag
    w2v2 = next(line for line in tables.splitlines() if line.startswith("| w2v2_linear |"))
    assert "unfinished (0/1) / 36.82" in w2v2
    assert (out / "figure2.png").is_file()
    assert len(list((out / "curves").rglob("*.png"))) == 4  # the unfinished runs have no log


def test_report_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No run.json"):
        report.main([str(tmp_path), f"--output={tmp_path / 'out'}"])


def test_budget_solver_lands_on_exact_counts(capsys):
    rows = budget.main(
        [str(REPO / "recipes/Google-speech-commands/PETL/hparams/lora_gsc.yaml"), "--key=lora_rank",
         "--targets=100000,221184,1000000"]
    )
    per_rank = 12 * 2 * (768 + 768)  # q and v in 12 blocks
    assert rows == [(100000, 3, 3 * per_rank), (221184, 6, 221184), (1000000, 27, 27 * per_rank)]
    assert capsys.readouterr().out.strip().endswith("--sweep=lora_rank:3,6,27")


def test_budget_solver_on_the_speech_encoders():
    """Unchanged on the new lobes: LoRA on WavLM-base+ (q and v of 12 blocks
    of width 768) and the Conformer adapter on Whisper-base's encoder."""
    rows = budget.main(
        [str(REPO / "recipes/IEMOCAP/PETL/hparams/wavlm_lora_iemocap.yaml"), "--key=lora_rank", "--targets=221184"]
    )
    assert rows == [(221184, 6, 221184)]
    rows = budget.main(
        [str(REPO / "recipes/IEMOCAP/PETL/hparams/whisper_conformer_iemocap.yaml"), "--key=adapter_bottleneck",
         "--targets=100000"]
    )
    assert rows == [(100000, 9, 100248)]


def test_study_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="key:value1,value2"):
        study.parse_sweep("kernel_size")
    with pytest.raises(FileNotFoundError, match="train.py"):
        study.main([str(tmp_path / "x.yaml"), f"--output_root={tmp_path}"])
    assert os.listdir(tmp_path) == []


def test_a_changed_setting_is_refused_naming_it(study_root, tmp_path):
    """After a study, the same command with --number_of_epochs=2 used to
    print "finished already" and report the old runs."""
    root, common = study_root
    lora = root / "runs/lora_esc50/default/fold1_seed7"
    stamp = (lora / "test_predictions.csv").stat().st_mtime
    with pytest.raises(ValueError) as err:
        study.main([str(ESC50 / "lora_esc50.yaml"), "--folds=1,2", "--seeds=7", *common, "--number_of_epochs=2"])
    message = str(err.value)
    assert str(lora) in message and "number_of_epochs: 50 -> 2" in message and "--continue_with_new_settings" in message
    assert (lora / "test_predictions.csv").stat().st_mtime == stamp  # nothing was run
    # the yaml's values are settings too
    edited = tmp_path / "lora_esc50.yaml"
    edited.write_text((ESC50 / "lora_esc50.yaml").read_text().replace("lora_rank: 6", "lora_rank: 7"))
    run = study.plan_runs(str(edited), root / "runs", [1], [7], None, [None], common[1:])[0]
    run["output_folder"] = str(lora)
    with pytest.raises(ValueError, match="lora_rank: 6 -> 7"):
        study.check_settings([run])


def test_a_value_equal_to_the_yaml_default_is_no_change(study_root, capsys):
    """The study used to refuse --lr=0.005 where lora_esc50.yaml says 0.005:
    it compared lists of overrides, not the values a run trains with."""
    root, common = study_root
    lora = root / "runs/lora_esc50/default"
    files = [lora / f"fold{fold}_seed7" / name for fold in (1, 2) for name in ("run.json", "test_predictions.csv")]
    stamps = [path.stat().st_mtime_ns for path in files]
    capsys.readouterr()
    study.main([str(ESC50 / "lora_esc50.yaml"), "--folds=1,2", "--seeds=7", *common, "--lr=0.005"])
    out = capsys.readouterr().out
    assert "[1/2] finished already" in out and "[2/2] finished already" in out
    assert [path.stat().st_mtime_ns for path in files] == stamps


def test_continue_with_new_settings_goes_on_with_finished_runs(study_root, tmp_path, capsys):
    """With --continue_with_new_settings a finished run whose settings
    changed is started again (not skipped), and its record lists the change."""
    root, common = study_root
    moved = tmp_path / "study"
    run = moved / "lora_esc50" / "default" / "fold1_seed7"
    shutil.copytree(root / "runs" / "lora_esc50" / "default" / "fold1_seed7", run)
    args = [str(ESC50 / "lora_esc50.yaml"), "--folds=1", "--seeds=7", f"--output_root={moved}", *common[1:],
            "--number_of_epochs=3"]
    with pytest.raises(ValueError, match="number_of_epochs: 50 -> 3"):
        study.main(args)
    capsys.readouterr()
    study.main(args + ["--continue_with_new_settings"])
    assert "finished already" not in capsys.readouterr().out
    record = json.loads((run / "params.json").read_text())
    assert record["finished"] and "number_of_epochs: 50 -> 3" in record["settings_changes"][0]["changes"]
    assert "--number_of_epochs=3" in json.loads((run / "run.json").read_text())["overrides"]


def test_figures_use_integer_ticks_and_log_scale_across_decades(tmp_path):
    root = tmp_path / "logs"
    for i, kernel in enumerate([1, 3, 7, 15, 31]):
        _fake_run(root / f"k{i}", "conformer_esc50", "ESC50", correct=5 + i % 3, sweep={"kernel_size": str(kernel)})
    _fake_run(root / "one_epoch", "lora_gsc", "Google-speech-commands", correct=5, overrides=["--number_of_epochs=1"])
    runs = report.load_runs([str(root)])
    fig = report.sweep_figure(runs, ("kernel_size",), lambda r: int(r["sweep"]["kernel_size"]), "kernel size")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3", "7", "15", "31"]
    curves = report.curves_figure(next(r for r in runs if r["folder"].endswith("one_epoch")))
    for ax in curves.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    # one epoch overridden from the recipe's: flagged in Table 1
    tables = report.tables(runs)
    row = next(line for line in tables.splitlines() if line.startswith("| lora |"))
    assert "⚠1" in row and "number_of_epochs=1 (recipe: " in tables


def test_report_reads_what_runs_recorded_not_their_names(tmp_path, capsys):
    """Dataset, method and the finished state come from params.json: a run
    whose yaml and folders are named anyhow, and whose log never says
    "test acc", lands in its cell; a run whose record says unfinished is not
    counted although its predictions exist."""
    root = tmp_path / "logs"
    anywhere = tmp_path / "my_experiments" / "try3.yaml"
    _fake_run(root / "a", "try3", "ESC50", correct=7, method="lora", hparams=anywhere)
    _fake_run(root / "b", "try3", "ESC50", correct=3, method="lora", hparams=anywhere)
    (root / "b" / "params.json").write_text(
        json.dumps(dict(json.loads((root / "b" / "params.json").read_text()), finished=False))
    )
    assert "test acc" not in (root / "a" / "train_log.txt").read_text()
    assert is_finished(root / "a") and not is_finished(root / "b")
    runs = report.main([str(root), f"--output={tmp_path / 'out'}"])
    assert {(r["dataset"], r["method"]) for r in runs} == {("ESC50", "lora")}
    row = next(line for line in (tmp_path / "out" / "tables.md").read_text().splitlines() if line.startswith("| lora |"))
    assert "| 70.00 ± 0.00 (1/2) / 86.45 |" in row
    assert "inferred" not in capsys.readouterr().out


def test_report_skips_runs_that_record_no_dataset_and_method(tmp_path, capsys):
    """A run folder whose params.json and run.json do not record its dataset
    and method (here: hand-made ones) is left out with a note naming it; the
    report is made of the others."""
    root = tmp_path / "logs"
    _fake_run(root / "current", "lora_esc50", "ESC50", correct=6)
    _fake_run(root / "old", "lora_esc50", "ESC50", correct=6, record="old")
    _fake_run(root / "none", "lora_gsc", "Google-speech-commands", correct=5, record="none")
    runs = report.main([str(root), f"--output={tmp_path / 'out'}"])
    out = capsys.readouterr().out
    assert [os.path.basename(r["folder"]) for r in runs] == ["current"]
    for name, yaml in (("old", "lora_esc50"), ("none", "lora_gsc")):
        assert f"Skipped {root / name}: neither its params.json nor its run.json records a dataset and a method (yaml {yaml})" in out


def test_report_of_only_unreadable_runs_is_a_clear_error(tmp_path, capsys):
    _fake_run(tmp_path / "mine", "my_run", "ESC50", correct=5, record="old")
    with pytest.raises(FileNotFoundError, match="No run.json of a reportable run"):
        report.main([str(tmp_path), f"--output={tmp_path / 'out'}"])
    assert "Skipped" in capsys.readouterr().out


def test_moa_ablation_figure_has_a_line_per_method_and_slots(tmp_path):
    """The follow-up paper's ablation: accuracy against the number of
    experts, one line per method and number of slots per expert."""
    root = tmp_path / "logs"
    for slots in (1, 2):
        for i, experts in enumerate([2, 4, 7, 15]):
            _fake_run(root / f"soft{slots}_{experts}", "soft_moa_gsc", "Google-speech-commands", correct=5 + i % 3,
                      sweep={"experts": str(experts)}, overrides=[f"--slots={slots}", f"--experts={experts}"])
    for experts in (2, 4):
        _fake_run(root / f"dense_{experts}", "dense_moa_gsc", "Google-speech-commands", correct=6,
                  sweep={"experts": str(experts)}, overrides=[f"--experts={experts}"])
    runs = report.load_runs([str(root)])
    fig = report.sweep_figure(runs, ("experts",), lambda r: int(r["sweep"]["experts"]), "experts", report.moa_label)
    ax = fig.axes[0]
    assert sorted(line.get_label() for line in ax.get_lines()) == [
        "Google-speech-commands dense_moa", "Google-speech-commands soft_moa, 1 slot",
        "Google-speech-commands soft_moa, 2 slots"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4", "7", "15"]
    report.main([str(root), f"--output={tmp_path / 'report'}"])
    assert (tmp_path / "report" / "figure_moa.png").is_file()
    assert not (tmp_path / "report" / "figure3.png").exists()


def test_budget_solver_knows_the_mixtures():
    """Mixtures: the solver sizes the experts' bottleneck (the number of
    experts and slots given as overrides); counts as the recipes'."""
    gsc = REPO / "recipes/Google-speech-commands/PETL/hparams"
    rows = budget.main([str(gsc / "soft_moa_gsc.yaml"), "--key=adapter_bottleneck", "--targets=922104"])
    assert rows == [(922104, 6, 922104)]
    per_block = lambda n, p, r: n * (768 * r + r + r * 768 + 768) + 768 * n * p + 1536  # noqa: E731
    rows = budget.main([str(gsc / "soft_moa_gsc.yaml"), "--key=experts", "--targets=500000", "--slots=2"])
    assert rows[0][2] == 12 * per_block(rows[0][1], 2, 6)
    rows = budget.main([str(gsc / "dense_moa_gsc.yaml"), "--key=adapter_bottleneck", "--targets=500000", "--experts=2"])
    assert rows[0][2] == 12 * (2 * (1536 + 768 * 2 * rows[0][1] + 2 * rows[0][1] + 32 * rows[0][1]
                                    + 2 * rows[0][1] + 768 * rows[0][1] + 768) + 768 * 2 + 2 + 1536)
