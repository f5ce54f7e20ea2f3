"""Audit the pinned dependencies (requirements.lock) for known vulnerabilities with pip-audit.

`make audit` runs it: it writes pip-audit's JSON report and a short Markdown table beside it, and
exits 1 when a pinned version has a known vulnerability, 2 when nothing could be audited (the
vulnerability database was not reachable: a run that checked nothing must not read as clean).
Standard library only, so it runs under any Python 3.11 with pip-audit installed beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path


def run_pip_audit(
    pip_audit: str, requirements: Path, service: str, report: Path
) -> subprocess.CompletedProcess:
    # --no-deps --disable-pip: the lock pins every package, so nothing is resolved or installed.
    command = [
        pip_audit,
        "--requirement",
        str(requirements),
        "--no-deps",
        "--disable-pip",
        "--vulnerability-service",
        service,
        "--format",
        "json",
        "--output",
        str(report),
        "--progress-spinner",
        "off",
    ]
    return subprocess.run(command, capture_output=True, text=True)


def summarise(report: dict, service: str, pinned: int) -> tuple[str, int, int]:
    """The Markdown table of a pip-audit JSON report; with (vulnerabilities, audited packages)."""
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = [d for d in dependencies if not d.get("skip_reason")]
    findings = [(d, v) for d in audited for v in d.get("vulns", [])]
    lines = [
        f"# pip-audit of requirements.lock ({service} vulnerability service)",
        "",
        f"{pinned} pinned packages, {len(audited)} audited, {len(skipped)} could not be audited, "
        f"{len(findings)} known vulnerabilities.",
        "",
    ]
    if findings:
        lines += ["| package | version | advisory | aliases | fixed in |", "| --- | --- | --- | --- | --- |"]
        for dependency, vuln in findings:
            lines.append(
                f"| {dependency['name']} | {dependency.get('version', '')} | {vuln['id']} | "
                f"{', '.join(vuln.get('aliases', []))} | {', '.join(vuln.get('fix_versions', [])) or '-'} |"
            )
        lines.append("")
    if skipped:
        reasons = Counter(d["skip_reason"].split(":")[0] for d in skipped)
        lines += ["Not audited:", ""]
        lines += [f"- {count} packages: {reason}" for reason, count in reasons.most_common()]
        lines.append("")
    if not audited:
        lines += [
            "**Nothing was audited**: the vulnerability service answered for none of the pinned "
            "versions. Run `make audit` where it is reachable; see SECURITY.md.",
            "",
        ]
    return "\n".join(lines), len(findings), len(audited)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pip-audit", default="pip-audit", help="the pip-audit executable")
    parser.add_argument("--requirements", type=Path, default=Path("requirements.lock"))
    parser.add_argument("--service", default="pypi", choices=["pypi", "osv"])
    parser.add_argument("--out", type=Path, default=Path("var"), help="folder of pip-audit.json and .md")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "pip-audit.json"
    report_path.unlink(missing_ok=True)
    result = run_pip_audit(args.pip_audit, args.requirements, args.service, report_path)
    if not report_path.exists():
        sys.stderr.write(result.stderr[-3000:])
        sys.stderr.write(f"\npip-audit wrote no report (exit {result.returncode}): the {args.service} ")
        sys.stderr.write("vulnerability service could not be queried from here\n")
        return 2
    pinned = sum(
        1
        for line in args.requirements.read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    )
    table, vulnerabilities, audited = summarise(json.loads(report_path.read_text()), args.service, pinned)
    (args.out / "pip-audit.md").write_text(table)
    print(table)
    print(f"reports: {report_path} and {args.out / 'pip-audit.md'}")
    if vulnerabilities:
        return 1
    return 0 if audited else 2


if __name__ == "__main__":
    sys.exit(main())
