from kfp import dsl
from kfp.dsl import Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_data(home: str, world_dir: str, report: Output[Markdown]) -> str:
    """The data gate: schema, missing values, duplicates, unknown users/items, row counts
    and new categories against the champion's training data. Writes a readable report;
    returns "passed" or "failed" (the pipeline trains only on "passed")."""
    import json
    from pathlib import Path

    from hyperrec.config import load_settings
    from hyperrec.data.gate import check_world_dir
    from hyperrec.registry.model_registry import champion_artifact

    previous = champion_artifact(load_settings(home), "data_profile.json")
    result = check_world_dir(Path(world_dir), json.loads(previous) if previous else None)
    Path(report.path).write_text(result.to_markdown())
    report.metadata.update({"passed": result.passed, "profile": json.dumps(result.profile)})
    print(result.to_markdown())
    return "passed" if result.passed else "failed"
