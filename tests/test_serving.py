"""Serving for real (``MultiTaskClassifier`` and the sites' routing): calls
from many threads or asyncio tasks get exactly the single-threaded results,
tasks are added and removed on a running classifier without mixing results
or leaking memory, and bad clips are refused, named, by both interfaces."""

import asyncio
import concurrent.futures
import gc
import threading
import weakref

import numpy as np
import pytest
import soundfile as sf
import torch

from method_zoo import ALL_METHODS, conformer, perturb_petl_
from speechbrain_petl.backbones import AST, Wav2Vec2
from speechbrain_petl.inference import AudioClassifier, MultiTaskClassifier, label_encoder, write_inference_folder
from speechbrain_petl.methods import BitFit, LoRA
from tiny import save_tiny_ast

#: Routed per sample (LoRA, BitFit, Conformer) and on sub-batches (deep prompts, prefixes).
TASKS = {name: ALL_METHODS[name] for name in ("lora", "bitfit", "conformer_pfeiffer_parallel", "prompt_deep", "prefix")}


def write_task(folder, lobe, n_classes, seed):
    perturb_petl_(lobe, seed=seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(lobe.hidden_size, n_classes)
    return write_inference_folder(folder, lobe, head, label_encoder([f"c{seed}_{i}" for i in range(n_classes)]))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_ast_dir):
    root = tmp_path_factory.mktemp("serving")
    made = {
        name: write_task(root / name, AST(str(tiny_ast_dir), max_frames=64, petl=factory()), 2 + seed % 3, seed)
        for seed, (name, factory) in enumerate(TASKS.items())
    }
    # Other lobe settings (48 frames): add_task must build a lobe sharing the frozen tensors.
    made["conformer_48"] = write_task(root / "conformer_48", AST(str(tiny_ast_dir), max_frames=48, petl=conformer()),
                                      3, 11)
    made["bitfit_2"] = write_task(root / "bitfit_2", AST(str(tiny_ast_dir), max_frames=64, petl=BitFit()), 4, 12)
    return made


@pytest.fixture(scope="module")
def server(folders):
    return MultiTaskClassifier.from_folders({name: folders[name] for name in TASKS})


def request(index):
    """A deterministic mixed batch: 1 to 4 clips of varied lengths and tasks."""
    generator = torch.Generator().manual_seed(1000 + index)
    names = list(TASKS)
    size = 1 + index % 4
    tasks = [names[(index + 2 * j) % len(names)] for j in range(size)]
    lengths = [4000 - 450 * ((index + j) % 4) for j in range(size)]
    wavs = torch.zeros(size, 4000)
    for j, length in enumerate(lengths):
        wavs[j, :length] = torch.randn(length, generator=generator)
    return wavs, torch.tensor(lengths) / 4000, tasks


REQUESTS = [request(i) for i in range(16)]


def results_of(classifier, req):
    wavs, wav_lens, tasks = req
    log_probs, _, _, labels = classifier.classify_batch(wavs, wav_lens, tasks=tasks)
    return log_probs, labels


def same(got, expected):
    """Exactly equal log-probabilities (torch.equal) and labels."""
    return got[1] == expected[1] and all(torch.equal(a, b) for a, b in zip(got[0], expected[0]))


def test_eight_threads_get_exactly_the_single_threaded_results(server):
    expected = [results_of(server, req) for req in REQUESTS]
    barrier = threading.Barrier(8)

    def worker(thread):
        barrier.wait()
        wrong = 0
        for call in range(50):
            index = (7 * thread + call) % len(REQUESTS)
            wrong += not same(results_of(server, REQUESTS[index]), expected[index])
        return wrong

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        wrong = list(pool.map(worker, range(8)))
    assert wrong == [0] * 8


def test_asyncio_tasks_in_an_executor_get_exactly_the_single_threaded_results(server):
    expected = [results_of(server, req) for req in REQUESTS]

    async def main():
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            calls = [
                loop.run_in_executor(pool, results_of, server, REQUESTS[i % len(REQUESTS)]) for i in range(8 * 50)
            ]
            return await asyncio.gather(*calls)

    got = asyncio.run(main())
    assert [i for i, result in enumerate(got) if not same(result, expected[i % len(REQUESTS)])] == []


def two_bitfit_lobes(tiny_ast_dir):
    lobes = []
    for seed in (0, 1):
        lobe = AST(str(tiny_ast_dir), max_frames=64).eval()
        lobe.attach(BitFit(), "a")
        lobe.attach(BitFit(), "b", active=False)
        perturb_petl_(lobe, seed=seed)
        lobes.append(lobe)
    return lobes


def test_routes_are_seen_only_by_the_caller_and_by_its_backbones_sites(tiny_ast_dir):
    first, second = two_bitfit_lobes(tiny_ast_dir)
    x = torch.randn(2, 4000)
    with torch.no_grad():
        plain = [first(x), second(x)]  # "a" active
        with first.routed({"b": None}):
            routed_b = first(x)
        assert not torch.equal(routed_b, plain[0])
        seen_elsewhere = {}
        with first.routed({"b": None}):
            # Another backbone's sites do not see the routes...
            seen_elsewhere["other backbone"] = second(x)
            # ...nor does another thread, even on this backbone.
            thread = threading.Thread(target=lambda: seen_elsewhere.__setitem__("other thread", first(x)))
            thread.start()
            thread.join()
            assert torch.equal(first(x), routed_b)
        assert torch.equal(first(x), plain[0])
    assert torch.equal(seen_elsewhere["other backbone"], plain[1])
    assert torch.equal(seen_elsewhere["other thread"], plain[0])


def test_interleaved_asyncio_tasks_keep_their_own_routes(tiny_ast_dir):
    lobe, _ = two_bitfit_lobes(tiny_ast_dir)
    x = torch.randn(2, 4000)
    with torch.no_grad():
        expected = {}
        for name in ("a", "b"):
            with lobe.routed({name: None}):
                expected[name] = lobe(x)
    assert not torch.equal(expected["a"], expected["b"])

    async def classify(name):
        with lobe.routed({name: None}):
            await asyncio.sleep(0.01)  # the other task enters its block meanwhile
            with torch.no_grad():
                return lobe(x)

    async def main():
        return await asyncio.gather(classify("a"), classify("b"))

    got_a, got_b = asyncio.run(main())
    assert torch.equal(got_a, expected["a"]) and torch.equal(got_b, expected["b"])


# ------------------------------------------------------------------ hot path
def test_sites_plan_once_per_routed_owner_set_and_again_after_a_change(server, monkeypatch):
    from speechbrain_petl import sites

    made = []
    for cls in (sites.Site, sites._ParameterSite):
        original = cls._make_plan
        monkeypatch.setattr(cls, "_make_plan", lambda self, routed, _o=original: made.append(routed) or _o(self, routed))
    lobe = server.tasks["lora"].lobe
    previous = lobe.active

    def change_the_active_set():
        lobe.set_active(["lora"])
        lobe.set_active(previous)

    wavs = torch.randn(3, 8000)
    mix = ["lora", "bitfit", "lora"]
    change_the_active_set()  # forget every plan
    expected = server.classify_batch(wavs, tasks=mix)[0]
    first = len(made)
    assert first > 0 and set(made) == {frozenset({"lora", "bitfit"})}
    for _ in range(3):  # same owner set: plans are looked up, not made
        got = server.classify_batch(wavs, tasks=mix)[0]
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert len(made) == first
    change_the_active_set()
    got = server.classify_batch(wavs, tasks=mix)[0]
    assert len(made) == 2 * first and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_routed_rows_in_place_never_touch_a_tensor_a_hook_passed_through(tiny_ast_dir):
    from speechbrain_petl.sites import SublayerSite, routing

    site = SublayerSite()
    site.attach("through", lambda x, y, mask: x)  # hands its input on as the output
    site.attach("plus", lambda x, y, mask: y + 1)
    x = torch.zeros(3, 2, 4)
    with torch.no_grad(), routing(site.route_key, {"through": None, "plus": torch.tensor([1])}):
        y = site(x, lambda x, mask: x * 2)
    assert torch.equal(x, torch.zeros(3, 2, 4))  # the input is not written into
    assert y[1].eq(1).all() and y[0].eq(0).all() and y[2].eq(0).all()


def test_routed_training_keeps_gradients_per_owner(tiny_ast_dir):
    lobe = AST(str(tiny_ast_dir), max_frames=64)
    lobe.attach(LoRA(rank=2), "a", active=False)
    lobe.attach(LoRA(rank=2), "b", active=False)
    perturb_petl_(lobe, seed=3)
    x = torch.randn(2, 4000)
    with lobe.routed({"a": torch.tensor([0]), "b": torch.tensor([1])}):
        lobe(x)[0].sum().backward()  # only row 0, routed to "a", is in the loss
    grads = {name: [p.grad for p in lobe.petl[name].parameters()] for name in ("a", "b")}
    assert all(g is not None and g.abs().sum() > 0 for g in grads["a"])
    assert all(g is None or g.abs().sum() == 0 for g in grads["b"])


# ------------------------------------------------------------------ hot swap
def tensor_count(classifier):
    """Distinct tensor storages the classifier reaches (as resident_bytes counts them)."""
    tensors = list(classifier.parameters()) + list(classifier.buffers())
    for lobe in classifier.lobes:
        tensors += lobe.resident_tensors()
    return len({t.untyped_storage().data_ptr() for t in tensors})


def owners_anywhere(classifier):
    return {owner for lobe in classifier.lobes for site in lobe.sites() for owner in site.owners()}


def test_add_and_remove_tasks_while_threads_classify(folders):
    base = {name: folders[name] for name in ("lora", "bitfit", "prompt_deep")}
    server = MultiTaskClassifier.from_folders(base)
    reference = MultiTaskClassifier.from_folders({**base, "conformer_48": folders["conformer_48"],
                                                  "bitfit_2": folders["bitfit_2"]})
    steady = [(torch.randn(3, 4000, generator=torch.Generator().manual_seed(i)), None,
               [["lora", "bitfit", "prompt_deep"][(i + j) % 3] for j in range(3)]) for i in range(6)]
    expected = [results_of(server, req) for req in steady]
    swapped = (torch.randn(2, 4000, generator=torch.Generator().manual_seed(99)), None, ["conformer_48", "bitfit_2"])
    swapped_expected = results_of(reference, swapped)
    stop = threading.Event()
    report = {"wrong": 0, "calls": 0, "swapped ok": 0, "swapped refused": 0, "other errors": []}

    def steady_worker(k):
        while not stop.is_set():
            index = (report["calls"] + k) % len(steady)
            report["wrong"] += not same(results_of(server, steady[index]), expected[index])
            report["calls"] += 1

    def swapped_worker():
        while not stop.is_set():
            try:
                got = results_of(server, swapped)
            except KeyError as err:  # refused loudly while a task is absent
                if "Unknown tasks" not in str(err):
                    raise
                report["swapped refused"] += 1
                continue
            if same(got, swapped_expected):
                report["swapped ok"] += 1
            else:
                report["other errors"].append(got)

    pool = concurrent.futures.ThreadPoolExecutor(4)
    threads = [pool.submit(steady_worker, k) for k in range(3)] + [pool.submit(swapped_worker)]
    try:
        for _ in range(3):
            server.add_task("bitfit_2", folders["bitfit_2"])  # same settings: reuses the lobe
            server.add_task("conformer_48", folders["conformer_48"])  # new settings: a lobe of its own
            assert len(server.lobes) == 2
            assert same(results_of(server, swapped), swapped_expected)
            server.remove_task("conformer_48")
            server.remove_task("bitfit_2")
            assert len(server.lobes) == 1
    finally:
        stop.set()
        for thread in threads:
            thread.result()  # re-raises what a worker raised
        pool.shutdown()
    assert report["calls"] > 0 and report["wrong"] == 0
    assert report["other errors"] == []
    assert [results_of(server, req) for req in steady] and all(
        same(results_of(server, req), exp) for req, exp in zip(steady, expected)
    )


def test_memory_returns_after_remove_task(folders):
    server = MultiTaskClassifier.from_folders({"lora": folders["lora"], "prompt_deep": folders["prompt_deep"]})
    before = (server.resident_bytes(), tensor_count(server), len(server.lobes), owners_anywhere(server))
    server.add_task("bitfit_2", folders["bitfit_2"])
    server.add_task("conformer_48", folders["conformer_48"])
    new_lobe = weakref.ref(server.tasks["conformer_48"].lobe)
    grown = server.resident_bytes()
    # The new lobe shares the frozen weights: it adds its own positions, methods and head only.
    assert before[0] < grown < 1.3 * before[0]
    server.remove_task("conformer_48")
    server.remove_task("bitfit_2")
    assert (server.resident_bytes(), tensor_count(server), len(server.lobes), owners_anywhere(server)) == before
    assert sorted(server.heads) == ["lora", "prompt_deep"]
    assert sorted(name for lobe in server.lobes for name in lobe.petl) == ["lora", "prompt_deep"]
    gc.collect()
    assert new_lobe() is None


def test_bad_changes_are_refused_and_change_nothing(folders, tmp_path):
    server = MultiTaskClassifier.from_folders({"lora": folders["lora"]})
    req = (torch.randn(1, 4000, generator=torch.Generator().manual_seed(5)), None, ["lora"])
    expected = results_of(server, req)
    state = (server.resident_bytes(), owners_anywhere(server), sorted(server.tasks))
    with pytest.raises(ValueError, match="'lora' is loaded already"):
        server.add_task("lora", folders["bitfit"])
    with pytest.raises(ValueError, match="without dots"):
        server.add_task("a.b", folders["bitfit"])
    other = save_tiny_ast(tmp_path / "other_ast", seed=1)
    stranger = write_task(tmp_path / "stranger", AST(str(other), max_frames=64, petl=LoRA(rank=2)), 2, 0)
    with pytest.raises(RuntimeError, match="trained on another backbone"):
        server.add_task("stranger", stranger)
    with pytest.raises(KeyError, match="No task named 'nope'"):
        server.remove_task("nope")
    with pytest.raises(ValueError, match="'lora' is the classifier's last task"):
        server.remove_task("lora")
    assert (server.resident_bytes(), owners_anywhere(server), sorted(server.tasks)) == state
    assert same(results_of(server, req), expected)


# ---------------------------------------------------------------- bad clips
def write_wav(path, samples):
    sf.write(path, np.asarray(samples, dtype=np.float32), 16000, subtype="FLOAT")
    return path


def test_bad_files_are_refused_naming_them(server, tmp_path):
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0))
    nan = write_wav(tmp_path / "nan.wav", np.full(4000, np.nan))
    good = write_wav(tmp_path / "good.wav", 0.1 * np.random.default_rng(0).standard_normal(4000))
    expected = server.classify_files([good], ["lora"])
    with pytest.raises(ValueError, match="empty.wav is empty"):
        server.classify_files([empty], ["lora"])
    with pytest.raises(ValueError, match=r"2 of 3 clips cannot be classified \(none was\): .*empty.wav is empty.*"
                                         r"nan.wav holds 4000 NaN/Inf samples of 4000"):
        server.classify_files([good, empty, nan], ["lora", "bitfit", "prefix"])
    with pytest.raises(ValueError, match="nan.wav holds 4000 NaN/Inf"):
        server.classify_files([nan], ["prompt_deep"])
    with pytest.raises(ValueError, match="classify_files got no files"):
        server.classify_files([], [])
    got = server.classify_files([good], ["lora"])
    assert torch.equal(got[0][0], expected[0][0]) and got[3] == expected[3]


def test_bad_rows_are_refused_naming_every_one_and_leave_good_rows_alone(server, folders, tmp_path):
    single = AudioClassifier.from_hparams(source=str(folders["lora"]), savedir=str(tmp_path / "single"))
    wavs = torch.randn(4, 4000, generator=torch.Generator().manual_seed(7))
    tasks = ["lora", "bitfit", "prefix", "lora"]
    good_multi = server.classify_batch(wavs, tasks=tasks)
    good_single = single.classify_batch(wavs)
    calls = {
        "multi": lambda w, lens=None: server.classify_batch(w, lens, tasks=tasks),
        "single": lambda w, lens=None: single.classify_batch(w, lens),
    }
    for interface, classify in calls.items():
        nan = wavs.clone()
        nan[1, 10] = float("nan")
        nan[3, 5:8] = float("inf")
        with pytest.raises(ValueError, match=r"2 of 4 clips cannot be classified \(none was\): clip 1 of the batch "
                                             r"holds 1 NaN/Inf samples of 4000; clip 3 of the batch holds 3 NaN"):
            classify(nan)
        # A relative length that leaves no sample is an empty clip; one outside (0, 1] is refused as such.
        with pytest.raises(ValueError, match="clip 2 of the batch is empty"):
            classify(wavs, torch.tensor([1.0, 1.0, 1e-5, 1.0]))
        with pytest.raises(ValueError, match=r"in \(0, 1\]; clip 0 of the batch has 0.0; clip 2 of the batch has 1.5"):
            classify(wavs, torch.tensor([0.0, 1.0, 1.5, 1.0]))
        padded = wavs.clone()
        padded[0, 3000:] = float("nan")
        with pytest.raises(ValueError, match="clip 0 of the batch holds 1000 NaN/Inf samples in its padding"):
            classify(padded, torch.tensor([0.75, 1.0, 1.0, 1.0]))
        with pytest.raises(TypeError, match="expects float waveforms"):
            classify((wavs * 32767).to(torch.int16))
        with pytest.raises(ValueError, match="empty batch"):
            classify(wavs[:0])
        with pytest.raises(ValueError, match="clip 0 of the batch is empty.*clip 3 of the batch is empty"):
            classify(wavs[:, :0])
    with pytest.raises(KeyError, match=r"Unknown tasks \['nope'\] \('nope': clip 1 of the batch, clip 2 of the batch\)"):
        server.classify_batch(wavs, tasks=["lora", "nope", "nope", "lora"])
    # After every refused call, the good rows give what they gave before.
    again_multi = server.classify_batch(wavs, tasks=tasks)
    assert all(torch.equal(a, b) for a, b in zip(again_multi[0], good_multi[0])) and again_multi[3] == good_multi[3]
    assert torch.equal(single.classify_batch(wavs)[0], good_single[0])


def test_clips_too_short_for_the_lobe_are_refused_by_both_interfaces(tiny_w2v2_dir, tmp_path):
    lobe = Wav2Vec2(str(tiny_w2v2_dir), petl=LoRA(rank=2))
    folder = write_task(tmp_path / "w2v2", lobe, 3, 0)
    server = MultiTaskClassifier.from_folders({"w2v2": folder})
    single = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "single"))
    minimum = lobe.min_samples
    wavs = torch.randn(2, 4000)
    lens = torch.tensor([1.0, (minimum - 1) / 4000])
    message = f"clip 1 of the batch has {minimum - 1} samples; this model needs at least {minimum}"
    with pytest.raises(ValueError, match=message):
        server.classify_batch(wavs, lens, tasks=["w2v2", "w2v2"])
    with pytest.raises(ValueError, match=message):
        single.classify_batch(wavs, lens)
    short = write_wav(tmp_path / "short.wav", 0.1 * np.ones(minimum - 1))
    with pytest.raises(ValueError, match=f"short.wav has {minimum - 1} samples"):
        server.classify_files([short], ["w2v2"])
