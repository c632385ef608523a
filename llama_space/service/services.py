"""The service layer as one object: built once per app (web.server.build_app), handed to the UI tabs, the named
Gradio endpoints and the routes, and closed once when the app stops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_space.service.actions import Actions
from llama_space.service.compare import Comparer
from llama_space.service.evaluate import Evaluator
from llama_space.service.export_actions import ExportActions
from llama_space.service.feedback import Feedback
from llama_space.training.runner import JobRunner

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend
    from llama_space.service.permissions import Permissions
    from llama_space.settings import Settings


@dataclass(frozen=True)
class Services:
    """The chat backend and every action over it, sharing one job runner and one set of permissions."""

    backend: ChatBackend
    actions: Actions  # fine-tuning jobs and adapter operations
    exports: ExportActions  # merge and GGUF export jobs, Hub pushes
    comparer: Comparer  # side-by-side answers
    evaluator: Evaluator  # loss, perplexity and answer matching
    feedback: Feedback  # marks on replies, and the datasets they make

    @classmethod
    def build(cls, backend: ChatBackend, permissions: Permissions) -> Services:
        """Every service over the loaded `backend`; the Services own it from now on (close() closes it)."""
        runner = JobRunner(backend.settings, backend)  # resumes a shared job the app's last end interrupted
        comparer = Comparer(backend, runner, permissions)
        return cls(backend, Actions(backend, runner, permissions), ExportActions(backend.settings, permissions),
                   comparer, Evaluator(comparer), Feedback(backend.settings, permissions))

    @property
    def settings(self) -> Settings:
        return self.backend.settings

    @property
    def permissions(self) -> Permissions:
        return self.actions.permissions

    def close(self) -> None:
        """Stop what runs in the app, whatever borrows the served weights before the backend that holds them:
        a running evaluation (after its current batch, nothing saved), then a training job sharing the weights
        (checkpointed; the next start resumes it), then the backend. Comparisons hold nothing of their own (their
        streams end with the backend), and training and export processes go on by themselves: the next start
        finds them."""
        self.evaluator.close()
        self.actions.runner.close()
        self.backend.close()
