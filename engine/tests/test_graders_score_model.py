"""`score_model` against a stand-in OpenAI-compatible server on 127.0.0.1 started by the test: the judge
gets the filled-in messages and sampling params, its JSON `result` (or a number in its text) is the score,
and every failure (HTTP error, refusal, no score, out of range, no endpoint) is a 0 with OpenAI's error flag.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from weitiao_engine.graders import GraderRunner, Judge, validate


class StandIn:
    """Answers POST /v1/chat/completions with the next queued (status, content) and records each request."""

    def __init__(self):
        self.answers: list[tuple[int, dict]] = []
        self.requests: list[tuple[dict, dict]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.requests.append((dict(self.headers), body))
                status, payload = stand_in.answers.pop(0)
                data = json.dumps(payload, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, content, refusal=None, status=200):
        usage = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
        message = {"role": "assistant", "content": content, "refusal": refusal}
        self.answers.append((status, {"id": "c1", "object": "chat.completion", "model": "judge-1", "usage": usage,
                                      "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}))


@pytest.fixture()
def stand_in():
    s = StandIn()
    yield s
    s.server.shutdown()


def judge_grader(**extra):
    return validate({
        "type": "score_model", "name": "judge", "model": "judge-1",
        "input": [
            {"role": "system", "content": "你是评审。给出 0 到 1 的分数。"},
            {"role": "user", "content": [{"type": "input_text", "text": "评论：{{item.review}}\n"}, "回答：{{sample.output_text}}"]},
        ],
        "sampling_params": {"temperature": 0, "seed": 7, "max_completions_tokens": 64},
        **extra,
    })


def test_the_judge_scores_with_filled_in_messages(stand_in):
    stand_in.answer(json.dumps({"steps": [{"description": "对比", "conclusion": "正确"}], "result": 0.8}, ensure_ascii=False))
    with GraderRunner(judge_grader(), judge=Judge(base_url=stand_in.url, api_key="sk-test")) as runner:
        result = runner.grade("好评", {"review": "送餐很快"})
    assert result["reward"] == 0.8
    assert result["metadata"]["sampled_model_name"] == "judge-1" and result["metadata"]["token_usage"] == 25
    assert result["model_grader_token_usage_per_model"] == {"judge-1": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}
    headers, body = stand_in.requests[0]
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["messages"][1] == {"role": "user", "content": "评论：送餐很快\n回答：好评"}
    assert (body["temperature"], body["seed"], body["max_completion_tokens"]) == (0, 7, 64)
    assert body["response_format"]["type"] == "json_schema"


def test_a_number_in_plain_text_and_the_range(stand_in):
    stand_in.answer("评分：7 分（满分 10）")
    stand_in.answer("12")
    grader = judge_grader(range=[0, 10], weitiao={"base_url": stand_in.url})  # the grader's own endpoint
    with GraderRunner(grader) as runner:
        assert runner.grade("好评", {"review": "好吃"})["reward"] == 7.0
        out_of_range = runner.grade("好评", {"review": "好吃"})
    assert out_of_range["reward"] == 0.0 and out_of_range["metadata"]["errors"]["model_grader_parse_error"] is True


def test_judge_failures_are_zero_with_the_flag(stand_in):
    stand_in.answer("不知道")
    stand_in.answer("", refusal="I can't help with that")
    stand_in.answers.append((500, {"error": {"message": "overloaded"}}))
    with GraderRunner(judge_grader(), judge=Judge(base_url=stand_in.url)) as runner:
        results = [runner.grade("好评", {"review": "好吃"}) for _ in range(3)]
    flags = ["model_grader_parse_error", "model_grader_refusal_error", "model_grader_server_error"]
    for result, flag in zip(results, flags):
        assert result["reward"] == 0.0 and result["metadata"]["errors"][flag] is True, flag
    assert "500" in results[2]["metadata"]["errors"]["model_grader_server_error_details"]
    with GraderRunner(judge_grader()) as runner:  # no endpoint anywhere
        nowhere = runner.grade("好评", {"review": "好吃"})
    assert nowhere["metadata"]["errors"]["model_grader_server_error"] is True
    assert "WEITIAO_JUDGE_BASE_URL" in nowhere["metadata"]["errors"]["model_grader_server_error_details"]
