"""Write the schema of one upstream CustomResourceDefinition as the compact JSON kept here.

    python manifests/crds/trim.py UPSTREAM.yaml --repo owner/name --ref TAG --commit SHA \
        --path path/in/repo.yaml [--kind Kind]

UPSTREAM.yaml is the CRD file as the upstream repository has it at that commit (one CRD, or
a multi-document file such as Istio's crd-all.gen.yaml with --kind choosing one). Only
what validation reads is kept: group, kind, and each served version's openAPIV3Schema with
the prose `description` strings dropped (a property *named* description is a schema, kept).
The output, manifests/crds/<group>_<plural>.json, records where it came from; README.md
lists them. Needs only PyYAML; no network.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def strip_descriptions(node):
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def trim(crd: dict, source: dict) -> dict:
    spec = crd["spec"]
    versions = {v["name"]: strip_descriptions(v["schema"]["openAPIV3Schema"])
                for v in spec["versions"] if v.get("served", True)}
    return {"source": source, "group": spec["group"], "kind": spec["names"]["kind"],
            "plural": spec["names"]["plural"], "versions": versions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("upstream", type=Path)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--path", required=True, help="the file's path in the upstream repository")
    ap.add_argument("--kind", help="pick this kind from a multi-CRD file")
    args = ap.parse_args()
    docs = [d for d in yaml.safe_load_all(args.upstream.read_text())
            if d and d.get("kind") == "CustomResourceDefinition"]
    if args.kind:
        docs = [d for d in docs if d["spec"]["names"]["kind"] == args.kind]
    if len(docs) != 1:
        raise SystemExit(f"expected one CRD, found {len(docs)} (use --kind)")
    source = {"repo": args.repo, "ref": args.ref, "commit": args.commit, "path": args.path}
    out = trim(docs[0], source)
    target = HERE / f"{out['group']}_{out['plural']}.json"
    target.write_text(json.dumps(out, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{target.name}: {out['kind']} {sorted(out['versions'])}, {target.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
