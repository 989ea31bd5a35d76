// A classic (not module) script that {% telegraphy_scripts %} loads before
// boot.js. Module scripts run only once the page is parsed, so
// window.telegraphy does not exist yet while classic scripts run; this
// defines, right away, a promise of the client that boot.js resolves:
//
//   <script>
//     telegraphyReady.then((client) => client.subscribeTopic("myshop.reports.ready", show));
//   </script>
//
// boot.js also dispatches `telegraphy:ready` on document ({ detail: { client, config } }).
(function () {
  if (window.telegraphyReady) return;
  var resolve;
  var ready = new Promise(function (r) { resolve = r; });
  Object.defineProperty(window, "telegraphyReady", { value: ready, configurable: true });
  Object.defineProperty(window, "__telegraphyResolve", { value: resolve, configurable: true });
})();
