"""The OpenAI-compatible engine against a small local fake server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import make_job
from worker_fakes import FakeOpenAI, Reply

from shared.protocol import BudgetForcing, FinishReason
from worker.engines.openai import OpenAIEngine, load_tokenizer
from worker.errors import EngineError

TOKENS = [(17, "4", -0.25), (18, "2", -0.5), (2, "", -0.125)]


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(TOKENS)
    fake.start()
    yield fake
    fake.stop()


def test_completions_with_local_chat_template(server: FakeOpenAI, tiny_model: str) -> None:
    tokenizer = load_tokenizer(tiny_model)
    assert tokenizer is not None
    engine = OpenAIEngine(server.url + "/v1", tiny_model, served_model="served", tokenizer=tokenizer)
    jobs = [make_job(tiny_model, seed=2**40 + 3, top_k=5), make_job(tiny_model, temperature=0.0)]
    generations = engine.generate(jobs)
    assert [g.completion_token_ids for g in generations] == [[17, 18, 2]] * 2
    assert generations[0].logprobs == [-0.25, -0.5, -0.125]
    assert generations[0].text == "42" and generations[0].finish_reason is FinishReason.stop
    assert [g.verifiable for g in generations] == [False, True]
    assert engine.verifiable is False and engine.info.name == "openai"
    bodies = [json.loads(body) for _, path, _, body in server.requests if path == "/v1/completions"]
    assert len(bodies) == 2
    first = next(b for b in bodies if b.get("top_k") == 5)
    assert first["model"] == "served" and first["logprobs"] == 1
    assert first["prompt"].endswith("<|im_start|>assistant\n") or "assistant" in first["prompt"]
    assert first["seed"] == (2**40 + 3) & 0x7FFFFFFF


def test_chat_completions_without_tokenizer(server: FakeOpenAI) -> None:
    engine = OpenAIEngine(server.url + "/v1", "some/remote-model", use_tokenizer=False)
    generation = engine.generate([make_job("some/remote-model", max_tokens=3)])[0]
    assert generation.text == "42"
    assert generation.logprobs == [-0.25, -0.5, -0.125]
    assert generation.completion_token_ids == []  # the fake returns token text, and no tokenizer is known
    body = json.loads(server.requests[-1][3])
    assert server.requests[-1][1] == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "What is 2 + 3?"}] and body["logprobs"] is True


def test_length_finish_reason_is_mapped() -> None:
    fake = FakeOpenAI(TOKENS, finish_reason="length")
    fake.start()
    try:
        engine = OpenAIEngine(fake.url + "/v1", "m", use_tokenizer=False)
        assert engine.generate([make_job("m")])[0].finish_reason is FinishReason.length
    finally:
        fake.stop()


def test_server_errors_become_engine_errors(server: FakeOpenAI) -> None:
    engine = OpenAIEngine(server.url + "/nowhere", "m", use_tokenizer=False)
    with pytest.raises(EngineError, match="404"):
        engine.generate([make_job("m")])
    unreachable = OpenAIEngine("http://127.0.0.1:9/v1", "m", use_tokenizer=False, timeout_s=2)
    with pytest.raises(EngineError, match="unreachable"):
        unreachable.generate([make_job("m")])


def completion(text: str, finish: str, stop_reason: str | None) -> Reply:
    choice = {"text": text, "logprobs": {"tokens": list(text), "token_logprobs": [-0.5] * len(text)},
              "finish_reason": finish, "stop_reason": stop_reason}  # fmt: skip
    return Reply(200, {"choices": [choice], "usage": {"prompt_tokens": 9}})


def test_budget_forcing_in_rounds_on_text(server: FakeOpenAI, tiny_model: str) -> None:
    tokenizer = load_tokenizer(tiny_model)
    engine = OpenAIEngine(server.url + "/v1", tiny_model, tokenizer=tokenizer)
    server.fail_next(
        "/v1/completions",
        completion("12+30", "stop", "</think>"),  # thinking ends after 5 tokens: under the minimum
        completion("=42", "stop", "</think>"),  # 5 + 5 (" Wait") + 3 = 13: past it
        completion(" 42", "stop", None),  # the answer, ended by the end-of-sequence token
    )
    budget = BudgetForcing(min_thinking_tokens=8, max_waits=1, think_end="</think>", wait_text=" Wait")
    gen = engine.generate([make_job(tiny_model, max_tokens=40).model_copy(update={"budget": budget})])[0]
    assert gen.text == "12+30 Wait=42</think> 42" and gen.finish_reason is FinishReason.stop
    assert not gen.verifiable and len(gen.completion_token_ids) == len(gen.logprobs)
    bodies = [json.loads(body) for _, path, _, body in server.requests if path == "/v1/completions"]
    assert [b.get("stop") for b in bodies] == [["</think>"], ["</think>"], None]
    assert bodies[1]["prompt"].endswith("12+30 Wait") and bodies[2]["prompt"].endswith("=42</think>")
    assert [b["max_tokens"] for b in bodies] == [40, 30, 19]  # what is left of max_tokens each round


def test_budget_maximum_cuts_thinking_on_text(server: FakeOpenAI, tiny_model: str) -> None:
    engine = OpenAIEngine(server.url + "/v1", tiny_model, tokenizer=load_tokenizer(tiny_model))
    server.fail_next("/v1/completions", completion("1234", "length", None), completion("!", "stop", None))
    budget = BudgetForcing(max_thinking_tokens=4, think_end="</think>")
    gen = engine.generate([make_job(tiny_model, max_tokens=30).model_copy(update={"budget": budget})])[0]
    assert gen.text == "1234</think>!"
    bodies = [json.loads(body) for _, path, _, body in server.requests if path == "/v1/completions"]
    assert bodies[0]["max_tokens"] == 4 and "stop" not in bodies[1]


def test_budget_jobs_need_the_tokenizer() -> None:
    engine = OpenAIEngine("http://127.0.0.1:9/v1", "m", use_tokenizer=False)
    job = make_job("m").model_copy(update={"budget": BudgetForcing()})
    assert engine.unsupported(job) is not None and engine.unsupported(make_job("m")) is None
