"""Embed agentrt with your own substrate and tool. Run: python examples/embed.py"""
import anyio
from pydantic import BaseModel

from agentrt import Agent, InferenceRequest, InferenceResult, Plan, Step, Timing, ToolResult, Usage
from agentrt.log import configure_logging

class EchoModel:  # your model: a name, async infer() and aclose()
    name = "echo"
    async def infer(self, request: InferenceRequest) -> InferenceResult:
        await anyio.sleep(0.05)  # time passes on the run's clock (real or virtual)
        return InferenceResult(text=request.prompt_text[-40:], usage=Usage(output_tokens=9),
                               timing=Timing(decode_s=0.05), substrate=self.name, model="echo")
    async def aclose(self) -> None: ...

class CityArgs(BaseModel):
    city: str

class Weather:  # your tool: a name, an argument model and async call()
    name, description, args_model = "weather", "Weather for a city.", CityArgs
    async def call(self, args: CityArgs) -> ToolResult:
        return ToolResult(output=f"sunny in {args.city}")
    async def aclose(self) -> None: ...

configure_logging(level="warning")  # the application, not the library, decides about logs
plan = Plan(name="trip", steps=[
    Step(id="ask", kind="weather", tool="weather", args={"city": "Lisbon"}),
    Step(id="answer", depends_on=["ask"], prompt="Pack for {{ ask }}")])
result = anyio.run(Agent(EchoModel(), tools=[Weather()]).run, plan)
print(result.status, f"{result.e2e_s:.2f}s", result.step("answer").text)
