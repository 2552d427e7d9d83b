"""lm-evaluation-harness multiple-choice tasks read from local files and scored as lm-eval scores them."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.evaluate.lm_eval_tasks import TaskError, encode_pair, evaluate_task, load_task, score_choices

TASKS = Path(__file__).parent / "lm_eval_tasks"


def test_acc_picks_the_likeliest_choice_and_acc_norm_the_likeliest_per_character():
    # lls -4.0 ("ab", 2 characters) and -9.0 ("abcdefgh", 8): acc picks choice 0 (-4 > -9);
    # per character -2.0 vs -1.125: acc_norm picks choice 1
    assert score_choices([-4.0, -9.0], ["ab", "abcdefgh"], gold=1) == {"acc": 0.0, "acc_norm": 1.0}
    # characters, not bytes: "æøå" is 3 characters (6 bytes), "abcd" 4. lls -6.0 and -5.9:
    # acc picks 1 (-5.9); per character -2.0 vs -1.475: 1 again (per byte it would have been 0: -1.0)
    assert score_choices([-6.0, -5.9], ["æøå", "abcd"], gold=1) == {"acc": 1.0, "acc_norm": 1.0}
    # a tie goes to the first choice, as numpy's argmax
    assert score_choices([-1.0, -1.0], ["a", "b"], gold=0) == {"acc": 1.0, "acc_norm": 1.0}


def test_reads_arc_and_hellaswag_style_tasks_as_lm_eval_renders_them():
    arc = load_task(TASKS / "arc_words.yaml")
    doc = arc.docs[0]
    assert arc.context(doc) == "Question: What is the first word of: kettle meadow plum\nAnswer:"
    assert arc.choices(doc) == ["meadow", "kettle", "plum"]
    assert arc.gold(doc, arc.choices(doc)) == 1  # "{{choices.label.index(answerKey)}}" renders "1"
    hellaswag = load_task(TASKS / "hellaswag_words.yaml")
    doc = hellaswag.docs[3]
    assert hellaswag.choices(doc) == ["fem", "ærtesuppe", "syv og tyve", "ø"]  # a field name: the field
    assert hellaswag.gold(doc, hellaswag.choices(doc)) == 0


def test_what_only_lm_eval_can_run_is_refused_naming_file_and_line(tmp_path):
    task = tmp_path / "hs.yaml"
    task.write_text("task: hs\noutput_type: multiple_choice\nprocess_docs: !function utils.process_docs\n")
    with pytest.raises(TaskError, match=r"hs.yaml:3: .*Python hooks run only in lm-eval"):
        load_task(task)
    task.write_text("task: g\noutput_type: generate_until\ndataset_path: json\n")
    with pytest.raises(TaskError, match="output_type 'generate_until'"):
        load_task(task)


def test_a_template_field_missing_from_a_document_names_the_key_and_the_fields(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"q": "x", "choices": ["a", "b"], "label": 0}\n')
    (tmp_path / "t.yaml").write_text(
        "task: t\ndataset_path: json\ndataset_kwargs: {data_files: {test: d.jsonl}}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: label\ndoc_to_choice: choices\n"
    )
    task = load_task(tmp_path / "t.yaml")
    with pytest.raises(TaskError, match=r"doc_to_text .*question.*\['choices', 'label', 'q'\]"):
        task.context(task.docs[0])


@pytest.fixture(scope="module")
def tiny(tiny_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.tiny_model import ensure_tiny_phi3

    path = ensure_tiny_phi3()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_trailing_context_spaces_belong_to_the_continuation(tiny):
    _, tokenizer = tiny
    assert encode_pair(tokenizer, "Answer: ", "kettle") == encode_pair(tokenizer, "Answer:", " kettle")


def test_each_choice_s_loglikelihood_is_what_the_model_s_own_loss_says(tiny):
    """Cross-checked with transformers' causal-LM loss over the continuation tokens (labels -100 elsewhere)."""
    import torch

    model, tokenizer = tiny
    task = load_task(TASKS / "arc_words.yaml")
    metrics, rows = evaluate_task(model, tokenizer, task)
    assert set(metrics) == {"arc_words_acc", "arc_words_acc_norm"} and len(rows) == 5
    row = rows[2]
    for choice, ll in zip(row["choices"], row["lls"]):
        whole = tokenizer.encode(row["context"] + " " + choice)
        context = tokenizer.encode(row["context"])
        labels = [-100] * len(context) + whole[len(context) :]
        with torch.no_grad():
            loss = model(torch.tensor([whole]), labels=torch.tensor([labels])).loss
        assert ll == pytest.approx(-float(loss) * (len(whole) - len(context)), abs=1e-4)
    assert metrics["arc_words_acc"] == sum(r["acc"] for r in rows) / 5


def test_scores_equal_lm_eval_s_own_run_of_the_same_task_files(tiny, monkeypatch):
    """The claim in the module docstring, against lm-eval itself (`HFLM` over the same model and
    tokenizer, the same YAML files): per-choice log-likelihoods within 1e-4, acc and acc_norm equal
    per document."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = tiny
    monkeypatch.chdir(TASKS)  # lm-eval resolves dataset_kwargs.data_files from the working directory
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    names = ["arc_words", "hellaswag_words"]
    theirs = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1),
        tasks=names,
        task_manager=TaskManager(include_path=str(TASKS)),
        log_samples=True,
    )
    for name in names:
        metrics, rows = evaluate_task(model, tokenizer, load_task(TASKS / f"{name}.yaml"))
        samples = sorted(theirs["samples"][name], key=lambda sample: sample["doc_id"])
        assert len(samples) == len(rows)
        for row, sample in zip(rows, samples):
            assert row["gold"] == sample["target"]
            assert row["lls"] == pytest.approx([ll for ll, _ in sample["filtered_resps"]], abs=1e-4)
            assert (row["acc"], row["acc_norm"]) == (sample["acc"], sample["acc_norm"])
        results = theirs["results"][name]
        assert metrics == {f"{name}_acc": results["acc,none"], f"{name}_acc_norm": results["acc_norm,none"]}
