from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate_model(evaluation: Input[Artifact], report: Output[Markdown], decision: Output[Artifact]) -> str:
    """The model gate: candidate vs popularity and vs the champion on the same test data,
    overall and per segment. Returns "blessed", "canary" (close enough to the champion for an
    online trial) or "rejected"; the decision (with reasons) goes to MLflow with the
    registered version."""
    import json
    from pathlib import Path

    from hyperrec.evaluation.gate import decide

    result = json.loads(Path(evaluation.path).read_text())
    verdict = decide(result["candidate"], result.get("champion"))
    Path(report.path).write_text(verdict.to_markdown())
    Path(decision.path).write_text(json.dumps(verdict.to_dict()))
    print(verdict.to_markdown())
    return "blessed" if verdict.blessed else ("canary" if verdict.canary else "rejected")
