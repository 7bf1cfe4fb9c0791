// Live analytics dashboard: the "quotes" stream (needs analytics:read), one bar
// per hour of the timeline, redrawn at every analytics_update. The stream is
// restarted by the SDK after a reconnect.
import { makeClient, mountConnectionPanel, showBanner } from "./common.js";

const client = makeClient();
const svg = document.querySelector('[data-testid="chart"]');
const NS = "http://www.w3.org/2000/svg";

function draw(data) {
  document.querySelector('[data-testid="total"]').textContent = String(data.total_quotes);
  document.querySelector('[data-testid="premium"]').textContent =
    data.average_premium === null ? "—" : Number(data.average_premium).toFixed(2);
  document.querySelector('[data-testid="updated"]').textContent = new Date().toLocaleTimeString();
  const timeline = data.timeline ?? [];
  const max = Math.max(1, ...timeline.map((b) => b.count));
  const width = 720 / Math.max(1, timeline.length);
  svg.replaceChildren(...timeline.map((b, i) => {
    const h = Math.round((b.count / max) * 200);
    const rect = document.createElementNS(NS, "rect");
    rect.setAttribute("x", String(i * width + 1));
    rect.setAttribute("y", String(210 - h));
    rect.setAttribute("width", String(Math.max(1, width - 2)));
    rect.setAttribute("height", String(h));
    rect.setAttribute("fill", "#3182ce");
    const title = document.createElementNS(NS, "title");
    title.textContent = `${b.hour}: ${b.count} quotes`;
    rect.append(title);
    return rect;
  }));
}

if (client !== null) {
  mountConnectionPanel(client);
  client.connect().then(() => {
    const stream = client.analytics.start("quotes", { hours: 24 }, {
      onUpdate: (frame) => draw(frame.data),
      onError: (e) => showBanner("conflict", `${e.code}: ${e.message} ${e.action}`),
    });
    window.example = { client, stream };
  }, (e) => showBanner("conflict", `${e.code}: ${e.message} ${e.action}`));
}
