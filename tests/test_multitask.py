"""One backbone serving many tasks (``speechbrain_petl.inference.multitask``): each
sample of a mixed batch gets exactly what its task's own model gives, the
shared computation runs once, frozen weights are resident once, and bad
requests are refused with clear errors."""

import itertools

import pytest
import torch

from method_zoo import ALL_METHODS, conformer, perturb_petl_
from speechbrain_petl.backbones import AST, Wav2Vec2
from speechbrain_petl.inference import write_inference_folder
from speechbrain_petl.inference import AudioClassifier, MultiTaskClassifier, label_encoder
from speechbrain_petl.methods import LoRA, PromptTuning
from speechbrain_petl.inference.multitask import resident_bytes
from tiny import save_tiny_ast

#: AST tasks: every method but full fine-tuning, two restricted to the top
#: block, and one at other input settings (48 frames instead of 64).
AST_TASKS = {
    name: (factory, 64)
    for name, factory in ALL_METHODS.items()
    if name not in ("full", "lora_all_linear", "conformer_even_kernel", "bottleneck_houlsby_sequential")
}
AST_TASKS.update(
    lora_top=(lambda: LoRA(rank=2, layers=[1]), 64),
    prompt_top=(lambda: PromptTuning(length=2, deep=True, layers=[1]), 64),
    conformer_48=(conformer, 48),
)
W2V2_TASKS = {
    name: ALL_METHODS[name] for name in ("lora", "conformer_pfeiffer_parallel", "bitfit", "prefix", "prompt_deep")
}


def write_task(folder, lobe, n_classes, seed):
    """Perturbs the lobe's PETL tensors, draws a head and writes the inference folder."""
    perturb_petl_(lobe, seed=seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(lobe.hidden_size, n_classes)
    labels = [f"class{seed}_{i}" for i in range(n_classes)]
    return write_inference_folder(folder, lobe, head, label_encoder(labels))


@pytest.fixture(scope="module")
def ast_folders(tmp_path_factory, tiny_ast_dir):
    root = tmp_path_factory.mktemp("ast_tasks")
    folders = {}
    for seed, (name, (factory, frames)) in enumerate(AST_TASKS.items()):
        lobe = AST(str(tiny_ast_dir), max_frames=frames, petl=factory())
        folders[name] = write_task(root / name, lobe, 2 + seed % 3, seed)
    return folders


@pytest.fixture(scope="module")
def ast_server(ast_folders):
    return MultiTaskClassifier.from_folders(ast_folders)


@pytest.fixture(scope="module")
def single_models(ast_folders, tmp_path_factory):
    savedir = tmp_path_factory.mktemp("single")
    return {
        name: AudioClassifier.from_hparams(source=str(folder), savedir=str(savedir / name))
        for name, folder in ast_folders.items()
    }


def clips(n, seed=0, samples=8000):
    """``n`` clips of different lengths, zero-padded, with relative lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [samples - 700 * (i % 5) for i in range(n)]
    wavs = torch.zeros(n, samples)
    for i, length in enumerate(lengths):
        wavs[i, :length] = torch.randn(length, generator=generator)
    return wavs, torch.tensor(lengths) / samples, lengths


_ALONE = {}  # (model id, task, clip seed, clip index) -> single-task output on that clip alone


def assert_matches_single_models(server, singles, tasks, seed=0):
    wavs, wav_lens, lengths = clips(len(tasks), seed)
    log_probs, scores, indices, labels = server.classify_batch(wavs, wav_lens, tasks=tasks)
    for i, task in enumerate(tasks):
        key = (id(singles[task]), task, seed, i)
        if key not in _ALONE:
            _ALONE[key] = singles[task].classify_batch(wavs[i : i + 1, : lengths[i]])
        alone = _ALONE[key]
        torch.testing.assert_close(log_probs[i], alone[0][0].reshape(-1), atol=2e-5, rtol=1e-4, msg=task)
        assert labels[i] == alone[3][0], task
        assert indices[i] == alone[2][0].reshape(()), task
    return log_probs, scores


def test_a_mixed_batch_of_every_task_equals_each_tasks_own_model(ast_server, single_models):
    tasks = list(AST_TASKS) * 2
    tasks = tasks[1::2] + tasks[::2]  # interleaved: no task's samples are contiguous
    assert_matches_single_models(ast_server, single_models, tasks)


@pytest.mark.parametrize("pair", list(itertools.combinations(AST_TASKS, 2)), ids="+".join)
def test_every_pairing_of_methods(pair, ast_server, single_models):
    first, second = pair
    assert_matches_single_models(ast_server, single_models, [first, second, second, first], seed=1)


def test_tasks_differ_so_routing_matters(ast_server):
    wavs, wav_lens, _ = clips(1)
    one = ast_server.classify_batch(wavs, wav_lens, tasks=["lora"])[0][0]
    other = ast_server.classify_batch(wavs, wav_lens, tasks=["bitfit"])[0][0]
    assert one.shape != other.shape or not torch.allclose(one, other)


def count_calls(lobe):
    """Counts the lobe's embed calls and each block's forward calls; returns
    the counts and a function that stops counting."""
    counts = {"embed": 0, "blocks": [0] * lobe.num_layers}
    embed = lobe.embed

    def counted_embed(*args, **kwargs):
        counts["embed"] += 1
        return embed(*args, **kwargs)

    def block_hook(index):
        def hook(module, args):
            counts["blocks"][index] += 1

        return hook

    lobe.embed = counted_embed
    handles = [block.register_forward_pre_hook(block_hook(i)) for i, block in enumerate(lobe.layers)]

    def stop():
        for handle in handles:
            handle.remove()
        del lobe.embed

    return counts, stop


@pytest.mark.parametrize(
    "tasks, embeds, blocks",
    [
        # Length-keeping methods: one routed pass through every block.
        (["lora_top", "bitfit", "lora_top", "linear"], 1, [1, 1]),
        (["lora_top", "linear", "lora_top"], 1, [1, 1]),
        # Adding a prompt task on the top block: block 0 still once, block 1 once more for it.
        (["lora_top", "prompt_top", "linear", "prompt_top"], 1, [1, 2]),
        # Methods in every block: one routed pass; the prompt tasks run apart.
        (["lora", "conformer_pfeiffer_parallel", "bitfit", "prompt_deep", "prefix"], 1, [3, 3]),
    ],
)
def test_shared_computation_runs_once(ast_server, tasks, embeds, blocks):
    lobe = ast_server.tasks[tasks[0]].lobe
    counts, stop = count_calls(lobe)
    try:
        wavs, wav_lens, _ = clips(len(tasks))
        ast_server.classify_batch(wavs, wav_lens, tasks=tasks)
    finally:
        stop()
    assert counts["embed"] == embeds
    assert counts["blocks"] == blocks


def test_settings_groups_share_the_frozen_weights(ast_server, tiny_ast_dir):
    wide, narrow = ast_server.tasks["lora"].lobe, ast_server.tasks["conformer_48"].lobe
    assert wide is not narrow and len(ast_server.lobes) == 2
    assert wide.layers[0].attention.query.linear.weight is narrow.layers[0].attention.query.linear.weight
    assert wide.pos_embed.shape != narrow.pos_embed.shape
    alone = AST(str(tiny_ast_dir), max_frames=64)
    frozen = resident_bytes(alone)
    methods_and_heads = sum(
        p.numel() * p.element_size() for lobe in ast_server.lobes for p in lobe.petl.parameters()
    ) + sum(p.numel() * p.element_size() for p in ast_server.heads.parameters())
    # One set of frozen weights (plus the narrow lobe's own positions and
    # small buffers), not one per settings group.
    assert resident_bytes(ast_server) < frozen + methods_and_heads + 0.2 * frozen


def test_bad_requests_are_refused(ast_server):
    wavs, wav_lens, _ = clips(2)
    with pytest.raises(KeyError, match="Unknown tasks \\['nope'\\]"):
        ast_server.classify_batch(wavs, wav_lens, tasks=["lora", "nope"])
    with pytest.raises(ValueError, match="each of the 2 clips, got 1 names"):
        ast_server.classify_batch(wavs, wav_lens, tasks=["lora"])
    with pytest.raises(ValueError, match="each of the 2 clips"):
        ast_server.classify_batch(wavs, wav_lens)


def test_artefacts_of_another_backbone_are_refused(ast_folders, tmp_path):
    other = save_tiny_ast(tmp_path / "other_ast", seed=1)
    stranger = write_task(tmp_path / "stranger", AST(str(other), max_frames=64, petl=LoRA(rank=2)), 2, 0)
    with pytest.raises(RuntimeError, match="trained on another backbone"):
        MultiTaskClassifier.from_folders({"lora": ast_folders["lora"], "stranger": stranger})


def test_full_fine_tuning_cannot_share_a_backbone(tiny_ast_dir, ast_folders, tmp_path):
    full = write_task(tmp_path / "full", AST(str(tiny_ast_dir), max_frames=64, petl=ALL_METHODS["full"]()), 2, 0)
    with pytest.raises(ValueError, match="full fine-tuning"):
        MultiTaskClassifier.from_folders({"lora": ast_folders["lora"], "full": full})


def test_task_names_and_folders_are_checked(ast_folders, tmp_path):
    with pytest.raises(ValueError, match="without dots"):
        MultiTaskClassifier.from_folders({"a.b": ast_folders["lora"]})
    with pytest.raises(FileNotFoundError, match="head.ckpt missing"):
        (tmp_path / "partial").mkdir()
        for name in ("hyperparams.yaml", "embedding_model.ckpt", "label_encoder.txt"):
            (tmp_path / "partial" / name).write_bytes((ast_folders["lora"] / name).read_bytes())
        MultiTaskClassifier.from_folders({"partial": tmp_path / "partial"})


def test_lobes_of_different_kinds_are_refused(ast_folders, tiny_w2v2_dir, tmp_path):
    w2v2 = write_task(tmp_path / "w2v2", Wav2Vec2(str(tiny_w2v2_dir), petl=LoRA(rank=2)), 2, 0)
    with pytest.raises(ValueError, match="one classifier serves one backbone"):
        MultiTaskClassifier.from_folders({"lora": ast_folders["lora"], "w2v2": w2v2})


@pytest.mark.parametrize("kind", ["w2v2", "wavlm", "whisper"])
def test_speech_encoder_tasks_are_routed_per_sample_too(kind, tiny_lobe, tmp_path):
    """Wav2Vec2, and the lobes with their own twists: WavLM's position bias
    (prefix keys and prompts get none, whatever the sub-batch) and
    Whisper's cropped positions."""
    folders = {
        name: write_task(tmp_path / name, tiny_lobe(kind, petl=factory()), 3, seed)
        for seed, (name, factory) in enumerate(W2V2_TASKS.items())
    }
    server = MultiTaskClassifier.from_folders(folders)
    singles = {
        name: AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "single" / name))
        for name, folder in folders.items()
    }
    tasks = ["lora", "prefix", "conformer_pfeiffer_parallel", "bitfit", "prompt_deep", "lora", "prefix", "bitfit"]
    assert_matches_single_models(server, singles, tasks)


def test_files_are_classified_as_each_tasks_own_model_does(ast_server, single_models, tmp_path):
    import soundfile as sf

    generator = torch.Generator().manual_seed(3)
    paths = []
    for i, seconds in enumerate((0.4, 0.7)):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, (0.1 * torch.randn(int(16000 * seconds), generator=generator)).numpy(), 16000)
        paths.append(path)
    tasks = ["conformer_pfeiffer_parallel", "prefix"]
    log_probs, _, _, labels = ast_server.classify_files(paths, tasks)
    for path, task, log_prob, label in zip(paths, tasks, log_probs, labels):
        alone = single_models[task].classify_file(path)
        torch.testing.assert_close(log_prob, alone[0].reshape(-1), atol=2e-5, rtol=1e-4)
        assert label == alone[3][0]
    with pytest.raises(FileNotFoundError, match="No audio file"):
        ast_server.classify_files([tmp_path / "missing.wav"], ["lora"])
