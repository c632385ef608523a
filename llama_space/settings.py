"""Application settings: one typed object, read from command-line flags and environment variables here only."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from llama_space.errors import UserError


def _opt(env: str, help: str, flag: str | None = None) -> dict:
    return {"env": env, "help": help, "flag": flag}


@dataclass
class Settings:
    """Everything the app needs to start; each field has a flag and an environment variable."""

    model: str = field(default="", metadata=_opt(
        "MODEL_ID", "Hub id, modelscope:<owner>/<name> (downloaded from ModelScope) or local path of the base "
        "model; empty = embedded SmolLM2-135M-Instruct"))
    device: str = field(default="auto", metadata=_opt(
        "LLAMA_SPACE_DEVICE", "auto, cpu, cuda (one GPU when one holds the weights, else spread over all) or cuda:N"))
    dtype: str = field(default="auto", metadata=_opt(
        "LLAMA_SPACE_DTYPE", "auto, float32, bfloat16 or float16 (auto: bf16 on GPUs of compute capability 8.0 "
        "and up, fp16 on older ones, the faster one on CPU)"))
    offload: bool = field(default=False, metadata=_opt(
        "LLAMA_SPACE_OFFLOAD", "when the weights do not fit in GPU memory, keep what does not fit in CPU memory "
        "(much slower) instead of refusing to start"))
    adapters_dir: Path = field(default=Path("adapters"), metadata=_opt(
        "LLAMA_SPACE_ADAPTERS_DIR", "where trained LoRA adapters live (use persistent storage on a Space)"))
    data_dir: Path = field(default=Path("data"), metadata=_opt(
        "LLAMA_SPACE_DATA_DIR", "model cache, training jobs and uploads"))
    host: str = field(default="127.0.0.1", metadata=_opt("GRADIO_SERVER_NAME", "address to listen on"))
    port: int = field(default=7860, metadata=_opt("GRADIO_SERVER_PORT", "port to listen on"))
    share: bool = field(default=False, metadata=_opt("LLAMA_SPACE_SHARE", "create a public gradio.live link"))
    auth: str = field(default="", metadata=_opt("LLAMA_SPACE_AUTH", "USER:PASS required to use the app"))
    api_key: str = field(default="", metadata=_opt(
        "LLAMA_SPACE_API_KEY", "bearer key required by the /v1 OpenAI-compatible routes when set"))
    max_queue: int = field(default=16, metadata=_opt(
        "LLAMA_SPACE_MAX_QUEUE", "generation requests waiting at most; more are refused at once"))
    concurrency: int = field(default=8, metadata=_opt(
        "LLAMA_SPACE_CONCURRENCY", "generation requests decoded at the same time, together in one batch "
        "(1: one at a time)"))
    max_upload_mb: int = field(default=50, metadata=_opt(
        "LLAMA_SPACE_MAX_UPLOAD_MB", "largest dataset upload accepted, in MB"))
    max_new_tokens_limit: int = field(default=4096, metadata=_opt(
        "LLAMA_SPACE_MAX_NEW_TOKENS", "upper bound for max_new_tokens in any request"))
    max_context: int = field(default=0, metadata=_opt(
        "LLAMA_SPACE_MAX_CONTEXT", "tokens one chat request may use, prompt plus reply (0: the model's window, or "
        "less when its KV cache would not fit in the memory free after loading)"))
    allow_public_changes: bool = field(default=False, metadata=_opt(
        "LLAMA_SPACE_ALLOW_PUBLIC_CHANGES",
        "allow training, deleting and pushing adapters when reachable beyond loopback without auth"))
    allowed_hosts: str = field(default="", metadata=_opt(
        "LLAMA_SPACE_ALLOWED_HOSTS", "comma-separated host names the app answers to besides IP addresses, "
        "localhost and the Space's own name (e.g. llama.example.com,*.example.org); other names are refused, "
        "which stops DNS rebinding"))
    allowed_origins: str = field(default="", metadata=_opt(
        "LLAMA_SPACE_ALLOWED_ORIGINS", "comma-separated origins (https://app.example.com) whose pages may call "
        "this app with the visitor's login; other sites' pages are refused"))
    trusted_proxies: str = field(default="", metadata=_opt(
        "LLAMA_SPACE_TRUSTED_PROXIES", "comma-separated IP addresses of reverse proxies whose X-Forwarded-Host "
        "and X-Forwarded-Proto are believed (on a Space: its own proxy, always)"))
    compile: str = field(default="auto", metadata=_opt(
        "LLAMA_SPACE_COMPILE", "auto, on or off: static KV cache + torch.compile for decoding "
        "(auto: on for CUDA; off for CPU, where compiling takes over a minute and decodes no faster)"))
    backend_url: str = field(default="", metadata=_opt(
        "LLAMA_SPACE_BACKEND_URL", "chat through this OpenAI-compatible server (e.g. vLLM at "
        "http://host:8000/v1) instead of loading the model here"))
    backend_api_key: str = field(default="", metadata=_opt(
        "LLAMA_SPACE_BACKEND_API_KEY", "bearer key the backend_url server requires"))

    def __post_init__(self) -> None:
        self.adapters_dir = Path(self.adapters_dir)
        self.data_dir = Path(self.data_dir)
        if not 0 < self.port < 65536:
            raise UserError(f"port must be between 1 and 65535, got {self.port}")
        if self.auth:
            user, sep, password = self.auth.partition(":")
            if not sep or not user or not password:
                raise UserError("auth must be USER:PASS with a user name and a password, e.g. --auth alice:s3cret")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        for name in ("max_queue", "concurrency", "max_upload_mb", "max_new_tokens_limit"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1")
        if self.max_context < 0:
            raise UserError(f"max_context must be 0 (sized from free memory) or a number of tokens, got "
                            f"{self.max_context}")
        if self.compile not in ("auto", "on", "off"):
            raise UserError(f"compile must be auto, on or off, got {self.compile!r}")
        if self.backend_url and not self.backend_url.startswith(("http://", "https://")):
            raise UserError(f"backend_url must start with http:// or https://, got {self.backend_url!r}")
        for origin in self.origin_list:
            if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
                raise UserError(f"allowed_origins takes origins such as https://app.example.com (scheme and host, "
                                f"no path), got {origin!r}")

    @property
    def auth_pair(self) -> tuple[str, str] | None:
        """(user, password) when auth is configured."""
        if not self.auth:
            return None
        user, _, password = self.auth.partition(":")
        return user, password

    @property
    def host_list(self) -> list[str]:
        """allowed_hosts as lower-case names."""
        return _split(self.allowed_hosts.lower())

    @property
    def origin_list(self) -> list[str]:
        """allowed_origins without trailing slashes."""
        return [origin.rstrip("/") for origin in _split(self.allowed_origins)]

    @property
    def proxy_list(self) -> list[str]:
        return _split(self.trusted_proxies)

    @property
    def exposed(self) -> bool:
        """Whether people other than this machine's user can reach the app (share link, non-loopback, a Space)."""
        loopback = self.host in ("127.0.0.1", "localhost", "::1")
        return self.share or not loopback or bool(os.environ.get("SPACE_ID"))

    @property
    def zero_gpu(self) -> bool:
        """Whether this runs on a ZeroGPU Space, where a GPU is lent per call (`spaces` sets SPACES_ZERO_GPU)."""
        return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")

    @property
    def changes_allowed(self) -> bool:
        """Training, deleting and pushing are on unless the app is exposed without auth (then opt-in)."""
        return not self.exposed or bool(self.auth) or self.allow_public_changes

    @property
    def changes_disabled_reason(self) -> str:
        """Why training, delete and push are off (empty when they are on)."""
        if self.changes_allowed:
            return ""
        return ("Training, deleting and pushing adapters are off because this app is reachable by anyone "
                "without a password. Start it with --auth USER:PASS (or LLAMA_SPACE_AUTH), or set "
                "LLAMA_SPACE_ALLOW_PUBLIC_CHANGES=true to allow them for everyone.")

    @property
    def cache_dir(self) -> Path:
        """Where converted model checkpoints are cached."""
        return self.data_dir / "cache"


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _convert(type_name: str, raw: str, name: str):
    """Turn an environment or flag string into the field's type (annotations are strings here)."""
    if type_name == "bool":
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise UserError(f"{name} must be true or false, got {raw!r}")
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise UserError(f"{name} must be a whole number, got {raw!r}") from None
    return Path(raw) if type_name == "Path" else raw


def build_parser() -> argparse.ArgumentParser:
    """The command line of app.py; --help lists each flag with its environment variable."""
    parser = argparse.ArgumentParser(description="Llama Space: chat, fine-tune and serve causal LMs.")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        # argparse %-formats help strings: escape a literal "%".
        help_text = f"{meta['help']} [env {meta['env']}; default {f.default!s}]".replace("%", "%%")
        if f.type == "bool":
            parser.add_argument(flag, action="store_const", const="true", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, metavar=f.name.upper(), help=help_text)
    return parser


def load_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Settings from flags, then environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values = {}
    for f in fields(Settings):
        raw = args.get(f.name)
        if raw is None:
            raw = environ.get(f.metadata["env"])
        if raw is not None:
            values[f.name] = _convert(f.type, raw, f.name)
    return Settings(**values)


CUDA_ALLOC_CONF = "expandable_segments:True"
ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # torch reads either


def prepare_cuda_allocator(environ: dict[str, str] | None = None) -> None:
    """Let torch's CUDA allocator grow its segments in place, unless the user configured the allocator.

    Chat's KV caches and a training job's activations come and go in one process on one GPU; with fixed
    segments the memory they free is split into blocks too small for the next large request (out of memory
    with GBs free). Torch reads the setting when CUDA first allocates, so this runs before torch is
    imported; job processes inherit it. CPU-only runs ignore it.
    """
    environ = os.environ if environ is None else environ
    if not any(environ.get(name) for name in ALLOC_CONF_VARS):
        environ["PYTORCH_CUDA_ALLOC_CONF"] = CUDA_ALLOC_CONF
