// Render the mathematics with the KaTeX served from the site (javascripts/katex/).
// pymdownx.arithmatex (generic mode) writes \( \) and \[ \] inside span/div.arithmatex;
// the notebooks keep Jupyter's $...$ and $$...$$ (markdown cells and text/latex outputs).
(function () {
  "use strict";
  var options = { throwOnError: false, trust: false, strict: "ignore" };
  var arithmatex = [
    { left: "\\(", right: "\\)", display: false },
    { left: "\\[", right: "\\]", display: true },
  ];
  var jupyter = [
    { left: "$$", right: "$$", display: true },
    { left: "$", right: "$", display: false },
  ].concat(arithmatex);

  function render(root) {
    root.querySelectorAll(".arithmatex").forEach(function (element) {
      renderMathInElement(element, Object.assign({ delimiters: arithmatex }, options));
    });
    // The notebooks, and the table of contents, whose titles come from their headings.
    root.querySelectorAll(".jupyter-wrapper, .md-nav--secondary").forEach(function (element) {
      renderMathInElement(element, Object.assign({ delimiters: jupyter }, options));
    });
  }

  // mkdocs-material's instant navigation swaps pages without a reload: document$ tells us.
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { render(document.body); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { render(document.body); });
  }
})();
