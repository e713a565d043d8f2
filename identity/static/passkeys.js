// Passkeys (WebAuthn) for the sign-in and account pages. No framework: the server
// sends PublicKeyCredential options as JSON (binary fields in base64url), this turns
// them into what navigator.credentials expects, and posts the answer back as JSON.
"use strict";

(function () {
  function toBytes(base64url) {
    const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "===".slice((base64.length + 3) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)).buffer;
  }

  function toBase64url(buffer) {
    let text = "";
    for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function csrfToken() {
    const field = document.querySelector("input[name=csrf_token]");
    return field ? field.value : "";
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: body === undefined ? "{}" : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (data.location) { window.location.assign(data.location); return null; }
    if (!response.ok) throw new Error(data.message || response.statusText);
    return data;
  }

  function credentialJSON(credential) {
    const response = credential.response;
    const json = {
      id: credential.id, rawId: toBase64url(credential.rawId), type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: { clientDataJSON: toBase64url(response.clientDataJSON) },
    };
    if (response.attestationObject) {
      json.response.attestationObject = toBase64url(response.attestationObject);
      json.response.transports = response.getTransports ? response.getTransports() : [];
    } else {
      json.response.authenticatorData = toBase64url(response.authenticatorData);
      json.response.signature = toBase64url(response.signature);
      if (response.userHandle) json.response.userHandle = toBase64url(response.userHandle);
    }
    return json;
  }

  async function signIn(button) {
    const options = await post(button.dataset.options);
    if (!options) return;
    options.challenge = toBytes(options.challenge);
    for (const allowed of options.allowCredentials || []) allowed.id = toBytes(allowed.id);
    const credential = await navigator.credentials.get({ publicKey: options });
    await post(button.dataset.submit, credentialJSON(credential));
  }

  async function register(button) {
    const options = await post(button.dataset.options);
    if (!options) return;
    options.challenge = toBytes(options.challenge);
    options.user.id = toBytes(options.user.id);
    for (const excluded of options.excludeCredentials || []) excluded.id = toBytes(excluded.id);
    const credential = await navigator.credentials.create({ publicKey: options });
    const name = document.getElementById("passkey-name");
    const url = button.dataset.submit + "?name=" + encodeURIComponent(name ? name.value : "");
    await post(url, credentialJSON(credential));
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!window.PublicKeyCredential) return;  // the buttons stay hidden
    for (const button of document.querySelectorAll("[data-passkey]")) {
      button.hidden = false;
      button.addEventListener("click", async (event) => {
        event.preventDefault();
        const status = document.getElementById("passkey-status");
        button.disabled = true;
        try {
          await (button.dataset.passkey === "register" ? register(button) : signIn(button));
        } catch (error) {
          if (status) { status.textContent = button.dataset.failed; status.hidden = false; }
        } finally {
          button.disabled = false;
        }
      });
    }
  });
})();
