// Bonsai Image: say on open which models a workflow names that are not here, and the next step.
//
// The frontend flags a missing model only when a widget value looks like a model *file*
// (.safetensors, .pt, ...). The Bonsai loaders pick *folders* (a release snapshot "<repo>/",
// "<repo>/vae", "bonsai/<repo>/text_encoder-..."), which it never flags, so a workflow opened on a
// fresh install would look ready until Run. After each graph load this checks every active Bonsai
// loader: a value that is not in the loader's own list (what exists and loads) is reported in one
// notice whose advice depends on what *is* installed:
//   * the loader lists other entries            -> "pick one of these installed entries: ...";
//   * the value is the single canonical file     -> the download gives the release folder (pick it),
//                                                   the file needs --to-canonical;
//   * the release's download was interrupted     -> run the same download again to resume;
//   * a release sits in models/diffusion_models  -> move it to models/bonsai/;
//   * nothing installed                          -> how to download (on a Mac: the MLX release too).
// What the lists cannot show (interrupted and misplaced releases, the server's platform) comes from
// GET /bonsai_image/installed (nodes/installed.py). The notice closes itself after NOTICE_LIFE_MS
// and has a close button.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

// node type -> the widget that names the model folder or file
const LOADER_WIDGETS = {
  BonsaiPipelineLoader: "snapshot",
  BonsaiModelLoader: "model_name",
  BonsaiTextEncoderLoader: "text_encoder",
  BonsaiVAELoader: "vae_folder",
};
const MUTED = new Set([2, 4]); // LiteGraph modes "never" (muted) and "bypass": not run, not checked
const NOTICE_LIFE_MS = 30000;
const MAX_SHOWN = 4; // installed entries named per loader
const CANONICAL = /^bonsai-image-(binary|ternary)-4B\.safetensors$/;
// This file is served at /extensions/<pack folder>/bonsai_missing_models.js
const PACK_FOLDER = decodeURIComponent(new URL(import.meta.url).pathname.split("/")[2] ?? "bonsai-image");
const CLI = `python custom_nodes/${PACK_FOLDER}/bonsai.py download`;

function optionList(widget) {
  const values = widget.options?.values;
  const list = typeof values === "function" ? values() : values;
  return Array.isArray(list) ? list : null;
}

export function findMissing(graph) {
  const missing = [];
  for (const node of graph?.nodes ?? []) {
    const name = LOADER_WIDGETS[node.type];
    if (!name || MUTED.has(node.mode)) continue;
    const widget = node.widgets?.find((w) => w.name === name);
    const list = widget ? optionList(widget) : null;
    if (!widget || !list || typeof widget.value !== "string" || list.includes(widget.value)) continue;
    missing.push({ id: node.id, title: node.title ?? node.type, value: widget.value, installed: list.filter((v) => typeof v === "string") });
  }
  return missing;
}

function variantOf(values) {
  return values.some((v) => v.includes("binary")) && !values.some((v) => v.includes("ternary")) ? "binary" : "ternary";
}

function releaseFolder(value) {
  return value.replace(/^(bonsai|text_encoders)\//, "").split("/")[0];
}

async function installedState() {
  try {
    const r = await api.fetchApi("/bonsai_image/installed");
    return r.ok ? await r.json() : {};
  } catch {
    return {}; // an older server without the route: the advice from the lists alone
  }
}

// One sentence per missing loader value: the next step for that node.
function adviceFor(m, state) {
  const where = `${m.title} #${m.id}`;
  const folder = releaseFolder(m.value);
  const interrupted = (state.interrupted ?? []).find((i) => i.folder.replace(/\/$/, "").split("/").pop() === folder);
  if (interrupted) return `${where}: ${m.value} -- ${interrupted.hint}.`;
  const canonical = m.value.match(CANONICAL);
  if (canonical) {
    const snap = m.installed.find((v) => v.endsWith("/") && v.includes(`-${canonical[1]}-`));
    if (snap) {
      return (
        `${where}: ${m.value} is the single file only "download ${canonical[1]} --to-canonical" writes; ` +
        `the download gave the release folder ${snap} -- pick it in model_name.`
      );
    }
  }
  if (m.installed.length) {
    const shown = m.installed.slice(0, MAX_SHOWN).join(", ") + (m.installed.length > MAX_SHOWN ? ` (+${m.installed.length - MAX_SHOWN} more)` : "");
    return `${where}: ${m.value} is not here -- pick one of these installed entries: ${shown}.`;
  }
  return null;
}

function downloadAdvice(missing, state) {
  const variant = variantOf(missing.map((m) => m.value));
  const mac = state.platform === "darwin";
  const release = mac
    ? ` On this Mac the MLX release is Apple's own layout: ${CLI} ${variant} --release mlx (release "mlx" in the node), then pick its folders in the loaders; the gemlite folders named here load too.`
    : "";
  return (
    `Get the release with the "Bonsai Download Model" node (choose ${variant}, Run), or in a shell with ComfyUI's Python: ` +
    `${CLI} ${variant}. Then press R to refresh the lists.${release}`
  );
}

export function noticeText(missing, state) {
  const advice = missing.map((m) => adviceFor(m, state));
  const unexplained = missing.filter((_m, i) => advice[i] === null);
  const lines = advice.filter((a) => a !== null);
  if (unexplained.length) {
    const values = [...new Set(unexplained.map((m) => m.value))];
    lines.push(
      `Not in models/bonsai yet: ${values.join(", ")} (${unexplained.map((m) => `${m.title} #${m.id}`).join(", ")}). ` +
        downloadAdvice(unexplained, state),
    );
  }
  if (state.misplaced_hint) lines.push(`Also: ${state.misplaced_hint}.`);
  lines.push("The note at the top of the workflow has the details.");
  const summary = unexplained.length && unexplained.length === missing.length && !lines.some((l) => l.includes("installed entries"))
    ? "Bonsai Image: models not downloaded yet"
    : "Bonsai Image: pick the installed models";
  return { summary, detail: lines.join(" ") };
}

function notify({ summary, detail }) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) {
    toast.add({ severity: "warn", summary, detail, life: NOTICE_LIFE_MS, closable: true });
  } else {
    console.warn(`[Bonsai Image] ${summary}: ${detail}`);
  }
}

app.registerExtension({
  name: "bonsai_image.missingModels",
  async afterConfigureGraph() {
    const missing = findMissing(app.graph);
    if (missing.length) notify(noticeText(missing, await installedState()));
  },
});
