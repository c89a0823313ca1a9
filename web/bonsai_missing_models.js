// Bonsai Image: say on open which model folders a workflow needs and how to get them.
//
// The frontend flags a missing model only when a widget value looks like a model *file*
// (.safetensors, .pt, ...). The Bonsai loaders pick *folders* (a release snapshot
// "<repo>/", "<repo>/vae", "bonsai/<repo>/text_encoder-..."), which it never flags, so a
// workflow opened on a fresh install would look ready until Run. After each graph load this
// checks every active Bonsai loader: a value that is not in the loader's own list (the folders
// that exist and the loader can load) is reported in one notice with the two ways to get it.
import { app } from "../../scripts/app.js";

// node type -> the widget that names the model folder or file
const LOADER_WIDGETS = {
  BonsaiPipelineLoader: "snapshot",
  BonsaiModelLoader: "model_name",
  BonsaiTextEncoderLoader: "text_encoder",
  BonsaiVAELoader: "vae_folder",
};
const MUTED = new Set([2, 4]); // LiteGraph modes "never" (muted) and "bypass": not run, not checked
// This file is served at /extensions/<pack folder>/bonsai_missing_models.js
const PACK_FOLDER = decodeURIComponent(new URL(import.meta.url).pathname.split("/")[2] ?? "bonsai-image");

function optionList(widget) {
  const values = widget.options?.values;
  const list = typeof values === "function" ? values() : values;
  return Array.isArray(list) ? list : null;
}

function findMissing(graph) {
  const missing = [];
  for (const node of graph?.nodes ?? []) {
    const name = LOADER_WIDGETS[node.type];
    if (!name || MUTED.has(node.mode)) continue;
    const widget = node.widgets?.find((w) => w.name === name);
    const list = widget ? optionList(widget) : null;
    if (!widget || !list || typeof widget.value !== "string" || list.includes(widget.value)) continue;
    missing.push({ id: node.id, title: node.title ?? node.type, value: widget.value });
  }
  return missing;
}

function variantOf(values) {
  return values.some((v) => v.includes("binary")) && !values.some((v) => v.includes("ternary")) ? "binary" : "ternary";
}

function notify(missing) {
  const values = [...new Set(missing.map((m) => m.value))];
  const variant = variantOf(values);
  const detail =
    `Not in models/bonsai yet: ${values.join(", ")} (${missing.map((m) => `${m.title} #${m.id}`).join(", ")}). ` +
    `Get the release with the "Bonsai Download Model" node (choose ${variant}, Run), or in a shell with ComfyUI's Python: ` +
    `python custom_nodes/${PACK_FOLDER}/bonsai.py download ${variant}. Then press R to refresh the lists. ` +
    `The note at the top of the workflow has the details.`;
  const toast = app.extensionManager?.toast;
  if (toast?.add) {
    toast.add({ severity: "warn", summary: "Bonsai Image: models not downloaded yet", detail });
  } else {
    console.warn(`[Bonsai Image] ${detail}`);
  }
}

app.registerExtension({
  name: "bonsai_image.missingModels",
  async afterConfigureGraph() {
    const missing = findMissing(app.graph);
    if (missing.length) notify(missing);
  },
});
