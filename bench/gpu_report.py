"""The GPU check's report: its targets, each with pass or fail, and the table a person reads (the JSON line after it
has every figure). Imported by gpu_check.py, which puts bench/ on sys.path."""

from __future__ import annotations

ONE_STREAM_SHARE = 0.70  # one stream's decode at least this share of the memory-bandwidth limit
STREAMS_GAIN = 15.0  # 32 streams' aggregate tok/s at least this many times one stream's
CHAT_DURING_JOB = 0.70  # chat beside a shared job at least this share of chat alone
ESTIMATE_ERROR = 0.15  # every planner estimate within this share of the measured peak


def _target(name: str, value: float | None, wanted: str, passed: bool | None) -> dict:
    return {"target": name, "value": None if value is None else round(value, 3), "wanted": wanted, "pass": passed}


def _ratio(top, bottom) -> float | None:
    return top / bottom if top and bottom else None


def targets(r: dict) -> list[dict]:
    """Each target with its figure and whether it passed (None: its phase did not measure it)."""
    limit = (r.get("bandwidth") or {}).get("bandwidth_limit_tps")
    compiled, eager = r.get("compiled") or {}, r.get("eager") or {}
    one = compiled.get("served_tps") or eager.get("served_tps")
    share = _ratio(one, limit)
    streams = r.get("streams") or {}
    gain = _ratio(streams.get("32", {}).get("aggregate_tps"), streams.get("1", {}).get("aggregate_tps"))
    shared = (r.get("jobs") or {}).get("shared") or {}
    chat = _ratio(shared.get("chat_tps_during"), shared.get("chat_tps_alone"))
    found = [
        _target("served one stream / bandwidth limit", share, f">= {ONE_STREAM_SHARE}",
                None if share is None else share >= ONE_STREAM_SHARE),
        _target("32 streams / 1 stream, aggregate tok/s", gain, f">= {STREAMS_GAIN}",
                None if gain is None else gain >= STREAMS_GAIN),
        _target("chat during shared job / alone", chat, f">= {CHAT_DURING_JOB}",
                None if chat is None else chat >= CHAT_DURING_JOB)]
    for name, job in (r.get("jobs") or {}).items():
        error = (job or {}).get("estimate_error")
        found.append(_target(f"job estimate / peak - 1, {name} job", error, f"within +-{ESTIMATE_ERROR}",
                             None if error is None else abs(error) <= ESTIMATE_ERROR))
    return found


def _cell(value) -> str:
    return "-" if value is None else str(value)


def print_table(r: dict) -> None:
    """The figures for a person: decode, streams, jobs, targets and phases."""
    print(f"\n{r.get('device', '?')}{' (--tiny)' if r['tiny'] else ''}; {r.get('versions')}")
    band = r.get("bandwidth") or {}
    if band:
        print(f"bandwidth limit {band['bandwidth_limit_tps']} tok/s: {band['weight_bytes'] / 1e9:.2f} GB of weights "
              f"per token at {band['spec_bandwidth_gb_s'] or band['copy_bandwidth_gb_s']} GB/s "
              f"(copy measured {band['copy_bandwidth_gb_s']} GB/s)")
    print(f"{'one stream, tok/s':<22}{'plain generate':>16}{'served':>10}{'load s':>9}")
    for name in ("eager", "compiled"):
        d = r.get(name) or {}
        print(f"{name:<22}{_cell(d.get('plain_generate_tps')):>16}{_cell(d.get('served_tps')):>10}"
              f"{_cell(d.get('load_s')):>9}")
    print(f"{'streams':>8}{'aggregate tok/s':>17}{'per-stream tok/s':>18}{'TTFT median ms':>16}{'TTFT max ms':>13}")
    for n, s in (r.get("streams") or {}).items():
        print(f"{n:>8}{s['aggregate_tps']:>17}{s['per_stream_decode_tps']:>18}{s['ttft_median_ms']:>16}"
              f"{s['ttft_max_ms']:>13}")
    print(f"{'job':<11}{'state':>10}{'placement':>11}{'plan GB':>9}{'job est. GB':>13}{'peak GB':>9}"
          f"{'train tok/s':>13}{'chat tok/s':>12}  peak from")
    for name, j in (r.get("jobs") or {}).items():
        if j:
            print(f"{name:<11}{j['state']:>10}{_cell(j['placement']):>11}{_cell(j['estimate_gb']):>9}"
                  f"{j['job_estimate_gb']:>13}{j['peak_gb']:>9}{j['train_tokens_per_s']:>13}{_cell(j.get('chat_tps_during')):>12}  "
                  f"{j['peak_source']}")
    print(f"{'target':<48}{'value':>9}{'wanted':>15}  result")
    for t in r["targets"]:
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[t["pass"]]
        print(f"{t['target']:<48}{_cell(t['value']):>9}{t['wanted']:>15}  {verdict}")
    for name, p in r["phases"].items():
        print(f"phase {name}: {p['state']} ({p['seconds']} s){' - ' + p['message'] if p['message'] else ''}")
    print(f"elapsed {r['elapsed_s']} s of a {r['budget_s']} s budget{'; ' + r['error'] if r.get('error') else ''}")
