// Lists the endpoints of /openapi.json: method, path, summary, description, form fields.
"use strict";

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

async function show() {
  const main = document.getElementById("endpoints");
  let spec;
  try {
    spec = await (await fetch("/openapi.json")).json();
  } catch (error) {
    main.replaceChildren(element("p", "Could not load /openapi.json: " + error.message, "error"));
    return;
  }
  main.replaceChildren(element("p", spec.info.description || "", "help"));
  for (const [path, operations] of Object.entries(spec.paths)) {
    for (const [verb, operation] of Object.entries(operations)) {
      const panel = element("section", undefined, "panel");
      panel.appendChild(element("h2", `${verb.toUpperCase()} ${path}`));
      if (operation.summary) panel.appendChild(element("p", operation.summary));
      if (operation.description) panel.appendChild(element("p", operation.description, "help"));
      const body = operation.requestBody?.content?.["multipart/form-data"]?.schema;
      if (body) {
        panel.appendChild(element("p", "multipart/form-data fields:"));
        const list = element("dl");
        for (const [name, field] of Object.entries(body.properties || {})) {
          list.appendChild(element("dt", name));
          const kind = field.type === "array" ? "files" : (field.format === "binary" ? "file" : field.type);
          list.appendChild(element("dd", `${kind}${field.default !== undefined ? ", default " + field.default : ""}${field.description ? " — " + field.description : ""}`));
        }
        panel.appendChild(list);
      }
      for (const [code, response] of Object.entries(operation.responses || {})) {
        panel.appendChild(element("p", `${code}: ${response.description}`, "help"));
      }
      main.appendChild(panel);
    }
  }
}

document.addEventListener("DOMContentLoaded", show);
