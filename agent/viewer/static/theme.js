// Loaded as a classic, blocking script in <head> so a remembered theme applies before the first paint
// (the page's modules run after parsing, which would flash the other palette first).
try {
  const saved = localStorage.getItem('cwm-viewer-theme');
  if (saved === 'dark' || saved === 'light') document.documentElement.dataset.theme = saved;
} catch (_) { /* storage disabled: follow the system theme */ }
