"""Every span, attribute and metric name agentrt emits, in one place.

GenAI names follow the OpenTelemetry GenAI semantic conventions (v1.41, the last release in the
main semantic-conventions repository; all Development stability). agentrt's own facts live under
``agentrt.*``, never under ``gen_ai.*``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AGENT_NAME",
    "ATTEMPT",
    "CHAT_SPAN",
    "CHIPS",
    "CLOCK",
    "COMM_S",
    "COST_USD",
    "DECODE_S",
    "DURATION_BUCKETS_S",
    "ENERGY_J",
    "ERROR_TYPE",
    "EXECUTE_TOOL_SPAN",
    "FINISH_REASONS",
    "FIRST_TOKEN_EVENT",
    "INPUT_TOKENS",
    "INVOKE_AGENT_SPAN",
    "METRIC_OPERATION_DURATION",
    "METRIC_TIME_PER_OUTPUT_TOKEN",
    "METRIC_TIME_TO_FIRST_TOKEN",
    "METRIC_TOKEN_USAGE",
    "NETWORK_S",
    "OPERATION_NAME",
    "OUTPUT_TOKENS",
    "PHASES",
    "PLAN_NAME",
    "PREFILL_S",
    "PROVIDER_NAME",
    "QUEUE_S",
    "REQUEST_MAX_TOKENS",
    "REQUEST_MODEL",
    "RESPONSE_MODEL",
    "RUN_ID",
    "RUN_STATUS",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "SPEC_BURSTS",
    "SPEC_TOKENS_PER_BURST",
    "STEP_ATTEMPTS",
    "STEP_ID",
    "STEP_INDEX",
    "STEP_KIND",
    "STEP_OPTIONAL",
    "STEP_RETRY_S",
    "STEP_SPAN",
    "STEP_STATUS",
    "STEP_WAITS_FOR",
    "SUBSTRATE",
    "TIMING",
    "TOKEN_BUCKETS",
    "TOKEN_TYPE",
    "TOOL_CALL_ID",
    "TOOL_NAME",
    "TOOL_OK",
    "TPOT_BUCKETS_S",
    "TPOT_S",
    "TTFT_BUCKETS_S",
    "TTFT_S",
]

# -- span names (format with the agent / model / tool name)
INVOKE_AGENT_SPAN: Final = "invoke_agent {agent}"
STEP_SPAN: Final = "step {step}"
CHAT_SPAN: Final = "chat {model}"
EXECUTE_TOOL_SPAN: Final = "execute_tool {tool}"
#: Phase child spans of a chat span, in the order they are laid out on the time axis.
PHASES: Final = ("queue", "network", "prefill", "decode")
FIRST_TOKEN_EVENT: Final = "gen_ai.first_token"

# -- OpenTelemetry GenAI
OPERATION_NAME: Final = "gen_ai.operation.name"
PROVIDER_NAME: Final = "gen_ai.provider.name"
AGENT_NAME: Final = "gen_ai.agent.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
RESPONSE_MODEL: Final = "gen_ai.response.model"
FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
TOOL_NAME: Final = "gen_ai.tool.name"
TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
TOKEN_TYPE: Final = "gen_ai.token.type"
ERROR_TYPE: Final = "error.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"

# -- agentrt
RUN_ID: Final = "agentrt.run.id"
RUN_STATUS: Final = "agentrt.run.status"
PLAN_NAME: Final = "agentrt.plan"
CLOCK: Final = "agentrt.clock"
STEP_ID: Final = "agentrt.step.id"
STEP_KIND: Final = "agentrt.step.kind"
STEP_INDEX: Final = "agentrt.step.index"
STEP_STATUS: Final = "agentrt.step.status"
STEP_ATTEMPTS: Final = "agentrt.step.attempts"
STEP_OPTIONAL: Final = "agentrt.step.optional"
STEP_WAITS_FOR: Final = "agentrt.step.waits_for"
STEP_RETRY_S: Final = "agentrt.step.retry_s"
ATTEMPT: Final = "agentrt.attempt"
SUBSTRATE: Final = "agentrt.substrate"
CHIPS: Final = "agentrt.substrate.chips"
COST_USD: Final = "agentrt.cost_usd"
ENERGY_J: Final = "agentrt.energy_j"
TOOL_OK: Final = "agentrt.tool.ok"
QUEUE_S: Final = "agentrt.timing.queue_s"
NETWORK_S: Final = "agentrt.timing.network_s"
PREFILL_S: Final = "agentrt.timing.prefill_s"
DECODE_S: Final = "agentrt.timing.decode_s"
COMM_S: Final = "agentrt.timing.comm_s"
TTFT_S: Final = "agentrt.timing.ttft_s"
TPOT_S: Final = "agentrt.timing.tpot_s"
#: Speculative decoding: the bursts that delivered the tokens after the first (verification
#: cycles; each cycle's accepted tokens arrive together) and their mean size.
SPEC_BURSTS: Final = "agentrt.spec.bursts"
SPEC_TOKENS_PER_BURST: Final = "agentrt.spec.tokens_per_burst"
#: The timing breakdown of one inference: field name of `Timing` -> attribute name.
TIMING: Final = {
    "queue_s": QUEUE_S,
    "network_s": NETWORK_S,
    "prefill_s": PREFILL_S,
    "decode_s": DECODE_S,
    "comm_s": COMM_S,
    "ttft_s": TTFT_S,
    "tpot_s": TPOT_S,
}

# -- metrics
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_TIME_TO_FIRST_TOKEN: Final = "gen_ai.server.time_to_first_token"
METRIC_TIME_PER_OUTPUT_TOKEN: Final = "gen_ai.server.time_per_output_token"

#: The conventions' advice, extended down to 0.5 ms: wafer-scale engines answer that fast.
DURATION_BUCKETS_S: Final = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFT_BUCKETS_S: Final = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
#: Per-token gaps span ~0.3 ms (wafer-scale, small models) to ~100 ms (large models on GPUs);
#: the conventions' advice starts at 10 ms, which would put every wafer-scale sample in one bucket.
TPOT_BUCKETS_S: Final = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
)
TOKEN_BUCKETS: Final = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
)
