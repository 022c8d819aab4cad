"""The bodies the HTTP faces accept, as strict pydantic models: they validate operator requests
and document the device API's (which onboarding.py parses by hand for its exact error codes).
They are built when imported, as FastAPI needs them, so they live apart from the read models
(schemas.py) that every `qlink` command loads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HelloRequest(Strict):
    device_id: str = Field(pattern="^[0-9a-fA-F]{64}$")
    public_key: str = Field(pattern="^[0-9a-fA-F]{130}$")


class ProofRequest(Strict):
    challenge_id: str = Field(pattern="^[0-9a-fA-F]{32}$")
    signature: str = Field(pattern="^[0-9a-fA-F]{128}$")
    csr_b64: str = Field(min_length=1, max_length=4096)


class BatchCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    policy: Literal["mosquitto", "aws", "azure"] = "mosquitto"


class BatchState(Strict):
    active: bool


class ImportRequest(Strict):
    format: Literal["csv", "json", "jsonl", "qdid"]
    data: str


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "operator", "admin"]
