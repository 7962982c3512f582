/* watcherd's stand-in for BTCPay Server's modal checkout script (/modal/btcpay.js), for plugins that open the
   payment page in an overlay instead of redirecting: the same global `window.btcpay` with the calls they make.
   The page (/i/{invoiceId}?view=modal) runs in an iframe and posts {invoiceId, status}, 'loaded' or 'close'
   to its parent, as BTCPay's does. No third-party code, nothing fetched. */
(function () {
    "use strict";
    var script = document.currentScript;
    var origin = script && script.src ? new URL(script.src).origin : window.location.origin;
    var prefix = origin;
    var frame = null;
    var receivers = [];
    var onEnter = function () {};
    var onLeave = function () {};

    function hideFrame() {
        if (frame === null) { return; }
        onLeave();
        frame.style.display = "none";
        frame.remove();
        frame = null;
    }

    function showFrame() {
        if (frame !== null) {
            onEnter();
            frame.style.display = "block";
        }
    }

    function showInvoice(invoiceId, params) {
        hideFrame();
        frame = document.createElement("iframe");
        frame.name = "btcpay";
        frame.title = "Payment";
        frame.setAttribute("allow", "clipboard-write");
        frame.style.cssText = "position:fixed;top:0;left:0;width:100%;height:100%;border:0;z-index:2000;" +
            "background:rgba(0,0,0,0.5);display:none";
        frame.src = prefix + "/i/" + encodeURIComponent(invoiceId) + "?view=modal";
        document.body.appendChild(frame);
        showFrame();
    }

    window.addEventListener("message", function (event) {
        if (event.origin !== new URL(prefix).origin) { return; }
        if (event.data === "close") { hideFrame(); }
        if (event.data === "loaded") { showFrame(); }
        for (var i = 0; i < receivers.length; i++) { receivers[i](event); }
    });

    window.btcpay = {
        showFrame: showFrame,
        hideFrame: hideFrame,
        showInvoice: showInvoice,
        appendInvoiceFrame: showInvoice,
        onModalWillEnter: function (callback) { onEnter = callback; },
        onModalWillLeave: function (callback) { onLeave = callback; },
        onModalReceiveMessage: function (callback) { receivers.push(callback); },
        setApiUrlPrefix: function (url) { prefix = String(url).replace(/\/+$/, ""); }
    };
})();
