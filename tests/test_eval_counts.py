"""evaluation_counts: counts from disjoint shares add up to the whole's, and padding prompts (`graded`) generate
without being graded (a sharded student's ranks must all generate alike)."""

from __future__ import annotations

from test_trainer import TOKENIZER, tiny_model

from oprd.train.evaluate import EvalCounts, evaluate, evaluation_counts

EXAMPLES = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+3=", "answer": "5"}, {"prompt": "4+4=", "answer": "8"}]


def test_only_the_graded_prompts_are_counted():
    model, seen = tiny_model(0), []

    def grader(text, answer):
        seen.append(answer)
        return answer == "2"

    counts = evaluation_counts(model, TOKENIZER, EXAMPLES, samples=2, temperature=1.0, max_new_tokens=4,
                               grader=grader, batch_prompts=2, graded=1)
    assert seen == ["2", "2"] and counts.total == 2 and counts.correct == 2
    whole = evaluation_counts(model, TOKENIZER, EXAMPLES, samples=2, temperature=1.0, max_new_tokens=4,
                              grader=grader, batch_prompts=2)
    assert whole.total == 6 and whole.correct == 2
    assert 0 < whole.length <= 6 * 4


def test_evaluate_is_the_counts_metrics():
    model = tiny_model(0)
    kwargs = dict(samples=2, temperature=1.0, max_new_tokens=4, seed=3)
    counts = evaluation_counts(model, TOKENIZER, EXAMPLES, **kwargs)
    assert evaluate(model, TOKENIZER, EXAMPLES, **kwargs) == counts.metrics()
    assert EvalCounts(1, 4, 10).metrics() == {"eval/accuracy": 0.25, "eval/response_length": 2.5}
