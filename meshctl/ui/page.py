"""The service map page: one self-contained HTML document (no CDN: clusters are often offline).

It polls ``/api/map`` and ``/api/flows`` every 2 s and draws workloads as boxes in columns (a workload
nobody calls on the left, each callee one column right of its callers), edges with their request rate,
p50 latency and error share, and the live flows table with the seed's columns. The namespace and
verdict filters narrow both.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nodemesh — service map</title>
<style>
 body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
 header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#1d232b;color:#fff}
 header h1{font-size:1.05em;margin:0;font-weight:600} header label{font-size:.85em}
 select{margin-left:.4em} #status{margin-left:auto;font-size:.8em;opacity:.8}
 #map{background:#fff;border-bottom:1px solid #dde1e6;display:block;width:100%}
 .node rect{fill:#fff;stroke:#4a6fa5;stroke-width:1.5;rx:6}
 .node.reserved rect{stroke:#999;stroke-dasharray:4 3}
 .node text{font-size:12px} .node .ns{fill:#6b7480;font-size:10px}
 .edge path{fill:none;stroke:#4a6fa5;stroke-width:1.6} .edge.dropped path{stroke:#c0392b}
 .edge text{font-size:10px;fill:#38414d}
 table{border-collapse:collapse;width:100%;font-size:12px}
 th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #e4e7eb;white-space:nowrap}
 th{background:#eef0f3;position:sticky;top:0} tr.dropped td.verdict{color:#c0392b;font-weight:600}
 tr.forwarded td.verdict{color:#1e8449} #flowsbox{max-height:45vh;overflow:auto}
</style></head><body>
<header><h1>nodemesh service map</h1>
 <label>namespace<select id="ns"><option value="">all</option></select></label>
 <label>verdict<select id="verdict"><option value="">all</option><option>forwarded</option>
 <option>dropped</option><option>redirected</option></select></label>
 <span id="status">loading…</span></header>
<svg id="map" height="420"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5"
 markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#4a6fa5"/>
 </marker></defs><g id="edges"></g><g id="nodes"></g></svg>
<div id="flowsbox"><table id="flows"><thead><tr><th>time</th><th>source</th><th>destination</th>
<th>port</th><th>L7</th><th>direction</th><th>verdict</th></tr></thead><tbody></tbody></table></div>
<script>
const NS='http://www.w3.org/2000/svg';
function el(tag,attrs,parent){const e=document.createElementNS(NS,tag);
 for(const k in attrs)e.setAttribute(k,attrs[k]);if(parent)parent.appendChild(e);return e}
function columns(nodes,edges){const col={};nodes.forEach(n=>col[n.id]=0);
 for(let i=0;i<nodes.length;i++){let moved=false;edges.forEach(e=>{if(e.source!==e.target&&
  col[e.target]<=col[e.source]&&col[e.source]<nodes.length){col[e.target]=col[e.source]+1;moved=true}});
  if(!moved)break}return col}
function draw(map){const svg=document.getElementById('map'),W=svg.clientWidth||1000;
 const gN=document.getElementById('nodes'),gE=document.getElementById('edges');
 gN.innerHTML='';gE.innerHTML='';
 const col=columns(map.nodes,map.edges),ncol=Math.max(1,...Object.values(col).map(c=>c+1));
 const rows={},pos={},bw=170,bh=40;map.nodes.forEach(n=>{const c=col[n.id];rows[c]=(rows[c]||0)+1;
  const x=30+c*((W-bw-60)/Math.max(1,ncol-1||1));pos[n.id]={x:ncol===1?W/2-bw/2:x,y:30+(rows[c]-1)*70}});
 svg.setAttribute('height',Math.max(220,110+70*Math.max(1,...Object.values(rows))));
 map.edges.forEach(e=>{const a=pos[e.source],b=pos[e.target];if(!a||!b)return;
  const g=el('g',{class:'edge'+(e.dropped&&!e.forwarded?' dropped':''),'data-source':e.source,
   'data-target':e.target},gE);let d,tx,ty;
  if(b.x>a.x){const x1=a.x+bw,y1=a.y+bh/2,x2=b.x,y2=b.y+bh/2;
   d=`M${x1},${y1} C${x1+50},${y1} ${x2-50},${y2} ${x2},${y2}`;tx=(x1+x2)/2-40;ty=(y1+y2)/2-6}
  else{const x1=a.x+bw/2,y1=a.y+bh,x2=b.x+bw/2+12,y2=b.y+bh,dip=Math.max(y1,y2)+45;
   d=`M${x1},${y1} C${x1},${dip} ${x2},${dip} ${x2},${y2}`;tx=(x1+x2)/2-40;ty=dip-2}
  el('path',{d:d,'marker-end':'url(#arrow)'},g);
  const t=el('text',{x:tx,y:ty},g);const bits=[`${e.rate}/s`];
  if(e.latency_p50_ms!==null)bits.push(`p50 ${e.latency_p50_ms}ms`);
  if(e.requests)bits.push(`${Math.round(100*e.error_share)}% err`);
  if(e.dropped)bits.push(`${e.dropped} dropped`);t.textContent=bits.join(' · ')});
 map.nodes.forEach(n=>{const p=pos[n.id],g=el('g',{class:'node'+(n.reserved?' reserved':''),
  'data-id':n.id,transform:`translate(${p.x},${p.y})`},gN);el('rect',{width:bw,height:bh},g);
  const t=el('text',{x:10,y:17},g);t.textContent=n.name;
  const s=el('text',{x:10,y:31,class:'ns'},g);s.textContent=n.namespace||'cluster'})}
function fill(rows){const tb=document.querySelector('#flows tbody');tb.innerHTML='';
 rows.forEach(r=>{const tr=document.createElement('tr');tr.className=r.verdict;
  [r.time.replace('T',' ').slice(0,23),r.source,r.destination,r.port,r.l7,r.direction,
   r.verdict+(r.drop_reason?` (${r.drop_reason})`:'')].forEach((v,i)=>{const td=document.createElement('td');
   td.textContent=v;if(i===6)td.className='verdict';tr.appendChild(td)});tb.appendChild(tr)})}
async function refresh(){const ns=document.getElementById('ns').value,
 v=document.getElementById('verdict').value;
 try{const [m,f,n]=await Promise.all([fetch(`api/map?namespace=${ns}`).then(r=>r.json()),
   fetch(`api/flows?namespace=${ns}&verdict=${v}&limit=200`).then(r=>r.json()),
   fetch('api/namespaces').then(r=>r.json())]);
  const sel=document.getElementById('ns');n.forEach(x=>{if(![...sel.options].some(o=>o.value===x)){
   const o=document.createElement('option');o.value=o.textContent=x;sel.appendChild(o)}});
  draw(m);fill(f);document.getElementById('status').textContent=
   `${m.nodes.length} workloads · ${m.edges.length} connections · ${f.length} flows shown`;
  document.body.dataset.loaded='1'}
 catch(err){document.getElementById('status').textContent='error: '+err}}
document.getElementById('ns').onchange=refresh;document.getElementById('verdict').onchange=refresh;
refresh();setInterval(refresh,2000);
</script></body></html>
"""
