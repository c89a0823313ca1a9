// Bonsai Image: the notes at the top of the pack's workflows, readable at the zoom a template opens at.
//
// The frontend draws Markdown notes at 10 px; a template fitted into a 1366x768 window opens at ~0.68
// zoom, so note text would be ~7 px. Its inline code is blue on a translucent blue, which on the
// note colour of the "Nodes 2.0" view (Vue nodes) is close to unreadable. Only the pack's own notes
// change: every one links its release on Hugging Face (huggingface.co/prism-ml/bonsai-image-...), which
// is what the selectors match (the classic canvas renders the note in .tiptap, Nodes 2.0 in
// .comfy-markdown-content).
import { app } from "../../scripts/app.js";

const BONSAI_NOTE = ':is(.tiptap, .comfy-markdown-content):has(a[href*="huggingface.co/prism-ml/bonsai-image-"])';
const CSS = `
${BONSAI_NOTE} { font-size: 12px; line-height: 1.35; }
${BONSAI_NOTE} h2 { font-size: 15px; }
${BONSAI_NOTE} code { color: inherit; background: rgba(0, 0, 0, 0.3); font-size: 11px; padding: 0 3px; border-radius: 3px; }
`;

app.registerExtension({
  name: "bonsai_image.notes",
  setup() {
    const style = document.createElement("style");
    style.dataset.bonsaiImage = "notes";
    style.textContent = CSS;
    document.head.appendChild(style);
  },
});
