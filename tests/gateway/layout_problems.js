// Every way a page can fail to fit its screen, as readable lines (none when it fits):
// - the page is wider than the window (so it scrolls sideways);
// - a shown element sticks out of its card or panel (whatever the page's own overflow says);
// - a row of the panel grid leaves cells empty beside its last panel.
// Content inside a box that scrolls by design (overflow-x auto) is judged by that box.
() => {
  const problems = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth) {
    problems.push(`page is ${doc.scrollWidth} px wide in a ${window.innerWidth} px window`);
  }
  const shown = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
  const name = (el) => el.id ? `#${el.id}` : `${el.tagName.toLowerCase()}.${[...el.classList].join('.')}`;
  const scrolls = (el) => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  for (const box of document.querySelectorAll('.panel, .card, .range-bar, header.top')) {
    if (!shown(box)) continue;
    const outer = box.getBoundingClientRect();
    const title = box.querySelector('h2')?.textContent.trim().split('\n')[0] || name(box);
    for (const el of box.querySelectorAll('*')) {
      if (!shown(el)) continue;
      let clipped = false;
      for (let up = el.parentElement; up && up !== box; up = up.parentElement) {
        if (scrolls(up)) { clipped = true; break; }
      }
      if (clipped) continue;
      const r = el.getBoundingClientRect();
      if (r.width === 0) continue;
      if (r.right > outer.right + 0.5 || r.left < outer.left - 0.5) {
        problems.push(`${name(el)} (${Math.round(r.left)}–${Math.round(r.right)}) sticks out of "${title}" (${Math.round(outer.left)}–${Math.round(outer.right)})`);
      }
    }
  }
  for (const grid of document.querySelectorAll('.grid')) {
    const g = grid.getBoundingClientRect();
    const rows = new Map();
    for (const p of grid.children) {
      if (!shown(p)) continue;
      const r = p.getBoundingClientRect();
      const key = Math.round(r.top);
      rows.set(key, [...(rows.get(key) || []), r]);
    }
    for (const [top, cells] of rows) {
      const right = Math.max(...cells.map((r) => r.right));
      if (right < g.right - 1) {
        problems.push(`the grid row at ${top} px ends at ${Math.round(right)} px of ${Math.round(g.right)}: empty cells beside it`);
      }
    }
  }
  return problems;
}
