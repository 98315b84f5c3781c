// widget.js — the website support widget of the chat server.
//
//   <script src="https://chat.example.com/widget.js" data-server="https://chat.example.com" async></script>
//
// adds a floating chat button that opens a conversation with the support
// team. Options, all optional, as data attributes of that script tag:
//   data-server    the chat server's origin (default: where widget.js came from)
//   data-color     accent colour, any CSS colour (default #2563eb)
//   data-position  right or left (default right)
//   data-greeting  the first line the visitor sees
//   data-title     the panel's title
//   data-lang      en, fr, de or es (default: the page's language, else en)
//   data-name      the visitor's display name, when the site knows it
//   data-token     a token (JWT) of the site's signed-in user: the widget then
//                  opens that user's own support conversation, not a visitor's
//   data-get-token the name of a global function returning such a token (or a
//                  promise of one), called before each connection and when the
//                  server refused the last one: `({reason}) => token`
//
// The page's origin must be allowed by the server (CHAT_ALLOWED_ORIGINS):
// the widget loads /chat-client.js as a module, asks for a visitor session
// and opens a WebSocket, all cross-origin. Everything lives in a shadow root,
// so the page's styles do not reach the widget and the widget's do not leak.
// User text is shown as text, never parsed as HTML, and bidi-isolated: names
// in <bdi>, bodies with dir="auto", so a direction override in one cannot
// reorder what is around it.
// The visitor's session and room are kept in the page origin's localStorage,
// so a reload keeps the conversation.
(function () {
  'use strict';

  const script = document.currentScript;
  if (!script || !script.src) return;
  const scriptUrl = new URL(script.src, location.href);
  const dataset = script.dataset;

  const STRINGS = {
    en: {
      title: 'Chat with us',
      greeting: 'Hi! How can we help you today?',
      open: 'Open chat',
      close: 'Close chat',
      online: 'We are online',
      offline: 'We are away. Leave a message and we will answer here.',
      typing: '{name} is typing…',
      support: 'Support',
      placeholder: 'Write a message…',
      label: 'Message',
      send: 'Send',
      sending: 'Sending…',
      sent: 'Sent',
      delivered: 'Delivered',
      read: 'Read',
      connecting: 'Connecting…',
      reconnecting: 'Connection lost. Reconnecting…',
      earlier: 'Show earlier messages',
      failed: 'Your message could not be sent: {reason}',
      unread: '{n} unread',
      deleted: 'This message was deleted',
      edited: 'edited',
      you: 'You',
      unavailable: 'The chat is not available right now.',
      attach: 'Attach files',
      files: 'Files to send',
      upload: 'Upload of {name}',
      cancelUpload: 'Cancel the upload of {name}',
      remove: 'Remove {name}',
      notAttached: '{name} was not attached: {reason}',
      tooMany: 'At most {n} files per message.',
      unreachable: 'the chat server could not be reached',
      drop: 'Drop files to attach',
      waiting: 'Sending when the files are uploaded…',
      attached: 'Attached files',
      tooBig: 'the file is too large',
      overQuota: 'your files would take more than the space allowed',
    },
    fr: {
      title: 'Discutons',
      greeting: 'Bonjour ! Comment pouvons-nous vous aider ?',
      open: 'Ouvrir le chat',
      close: 'Fermer le chat',
      online: 'Nous sommes en ligne',
      offline: 'Nous sommes absents. Laissez un message, nous répondrons ici.',
      typing: '{name} écrit…',
      support: 'Support',
      placeholder: 'Écrivez un message…',
      label: 'Message',
      send: 'Envoyer',
      sending: 'Envoi…',
      sent: 'Envoyé',
      delivered: 'Distribué',
      read: 'Lu',
      connecting: 'Connexion…',
      reconnecting: 'Connexion perdue. Reconnexion…',
      earlier: 'Messages précédents',
      failed: "Votre message n'a pas pu être envoyé : {reason}",
      unread: '{n} non lus',
      deleted: 'Ce message a été supprimé',
      edited: 'modifié',
      you: 'Vous',
      unavailable: "Le chat n'est pas disponible pour le moment.",
      attach: 'Joindre des fichiers',
      files: 'Fichiers à envoyer',
      upload: 'Envoi de {name}',
      cancelUpload: "Annuler l'envoi de {name}",
      remove: 'Retirer {name}',
      notAttached: "{name} n'a pas été joint : {reason}",
      tooMany: 'Au plus {n} fichiers par message.',
      unreachable: 'le serveur de chat est injoignable',
      drop: 'Déposez les fichiers à joindre',
      waiting: 'Envoi dès que les fichiers sont transférés…',
      attached: 'Fichiers joints',
      tooBig: 'le fichier est trop volumineux',
      overQuota: "vos fichiers dépasseraient l'espace autorisé",
    },
    de: {
      title: 'Schreiben Sie uns',
      greeting: 'Hallo! Wie können wir helfen?',
      open: 'Chat öffnen',
      close: 'Chat schließen',
      online: 'Wir sind online',
      offline: 'Wir sind gerade nicht da. Hinterlassen Sie eine Nachricht, wir antworten hier.',
      typing: '{name} schreibt…',
      support: 'Support',
      placeholder: 'Nachricht schreiben…',
      label: 'Nachricht',
      send: 'Senden',
      sending: 'Wird gesendet…',
      sent: 'Gesendet',
      delivered: 'Zugestellt',
      read: 'Gelesen',
      connecting: 'Verbinde…',
      reconnecting: 'Verbindung verloren. Verbinde neu…',
      earlier: 'Ältere Nachrichten',
      failed: 'Ihre Nachricht konnte nicht gesendet werden: {reason}',
      unread: '{n} ungelesen',
      deleted: 'Diese Nachricht wurde gelöscht',
      edited: 'bearbeitet',
      you: 'Sie',
      unavailable: 'Der Chat ist gerade nicht verfügbar.',
      attach: 'Dateien anhängen',
      files: 'Zu sendende Dateien',
      upload: 'Hochladen von {name}',
      cancelUpload: 'Hochladen von {name} abbrechen',
      remove: '{name} entfernen',
      notAttached: '{name} wurde nicht angehängt: {reason}',
      tooMany: 'Höchstens {n} Dateien pro Nachricht.',
      unreachable: 'der Chat-Server ist nicht erreichbar',
      drop: 'Dateien zum Anhängen hier ablegen',
      waiting: 'Wird gesendet, sobald die Dateien hochgeladen sind…',
      attached: 'Angehängte Dateien',
      tooBig: 'die Datei ist zu groß',
      overQuota: 'Ihre Dateien würden den erlaubten Platz überschreiten',
    },
    es: {
      title: 'Hable con nosotros',
      greeting: '¡Hola! ¿En qué podemos ayudarle?',
      open: 'Abrir el chat',
      close: 'Cerrar el chat',
      online: 'Estamos en línea',
      offline: 'No estamos ahora. Deje un mensaje y le responderemos aquí.',
      typing: '{name} está escribiendo…',
      support: 'Soporte',
      placeholder: 'Escriba un mensaje…',
      label: 'Mensaje',
      send: 'Enviar',
      sending: 'Enviando…',
      sent: 'Enviado',
      delivered: 'Entregado',
      read: 'Leído',
      connecting: 'Conectando…',
      reconnecting: 'Conexión perdida. Reconectando…',
      earlier: 'Mensajes anteriores',
      failed: 'No se pudo enviar su mensaje: {reason}',
      unread: '{n} sin leer',
      deleted: 'Este mensaje fue eliminado',
      edited: 'editado',
      you: 'Usted',
      unavailable: 'El chat no está disponible ahora.',
      attach: 'Adjuntar archivos',
      files: 'Archivos para enviar',
      upload: 'Subida de {name}',
      cancelUpload: 'Cancelar la subida de {name}',
      remove: 'Quitar {name}',
      notAttached: 'No se adjuntó {name}: {reason}',
      tooMany: 'Como máximo {n} archivos por mensaje.',
      unreachable: 'no se puede contactar con el servidor de chat',
      drop: 'Suelte los archivos para adjuntarlos',
      waiting: 'Se enviará cuando terminen de subirse los archivos…',
      attached: 'Archivos adjuntos',
      tooBig: 'el archivo es demasiado grande',
      overQuota: 'sus archivos superarían el espacio permitido',
    },
  };

  const pageLang = (document.documentElement.lang || navigator.language || 'en').slice(0, 2).toLowerCase();
  const lang = STRINGS[(dataset.lang || '').toLowerCase()] ? dataset.lang.toLowerCase() : STRINGS[pageLang] ? pageLang : 'en';
  const strings = STRINGS[lang];
  const t = (key, values = {}) => strings[key].replace(/\{(\w+)\}/g, (_, k) => String(values[k] ?? ''));
  // The same with each value as its own bidi isolate (<bdi>), as nodes: a
  // name in right-to-left script or with a direction override cannot
  // reorder the words around it.
  const tNodes = (key, values = {}) =>
    strings[key]
      .split(/(\{\w+\})/)
      .filter((part) => part !== '')
      .map((part) => {
        const name = /^\{(\w+)\}$/.exec(part);
        return name ? h('bdi', { text: String(values[name[1]] ?? '') }) : part;
      });

  let server;
  try {
    server = new URL(dataset.server || scriptUrl.origin, location.href).origin;
  } catch {
    console.error('chat widget: data-server is not a URL');
    return;
  }
  const supportsColor = (value) => typeof CSS !== 'undefined' && CSS.supports && CSS.supports('color', value);
  const accent = dataset.color && supportsColor(dataset.color) ? dataset.color : '#2563eb';
  const side = dataset.position === 'left' ? 'left' : 'right';
  const title = dataset.title || t('title');
  const greeting = dataset.greeting || t('greeting');
  // A signed-in user of the site (data-token or data-get-token) chats as
  // themselves; everyone else as an anonymous visitor.
  const tokenProvider = (() => {
    if (dataset.getToken) {
      return (info) => {
        const fn = window[dataset.getToken];
        if (typeof fn !== 'function') throw new Error(`data-get-token: ${dataset.getToken} is not a function`);
        return fn(info);
      };
    }
    if (dataset.token) return () => dataset.token;
    return null;
  })();
  const signedIn = tokenProvider !== null;
  // Signed-in users keep nothing but their unsent messages here, per token
  // holder: the site owns their session.
  const STORE_KEY = signedIn ? `chat-widget:${server}:signed-in` : `chat-widget:${server}`;

  const STYLE = `
    :host { all: initial; }
    * { box-sizing: border-box; }
    .root { position: fixed; bottom: 20px; ${side}: 20px; z-index: 2147483000;
      font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #111827;
      display: flex; flex-direction: column; align-items: ${side === 'right' ? 'flex-end' : 'flex-start'}; gap: 12px; }
    button { font: inherit; cursor: pointer; }
    :focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
    .launcher { position: relative; width: 56px; height: 56px; border-radius: 50%; border: none;
      background: var(--accent); color: #fff; box-shadow: 0 4px 14px rgba(0,0,0,.25);
      display: grid; place-items: center; }
    .launcher svg { width: 28px; height: 28px; fill: currentColor; }
    .badge { position: absolute; top: -4px; ${side === 'right' ? 'left' : 'right'}: -4px; min-width: 22px; height: 22px;
      padding: 0 6px; border-radius: 11px; background: #dc2626; color: #fff; font-size: 12px; font-weight: 700;
      display: grid; place-items: center; }
    .badge[hidden] { display: none; }
    .panel { width: min(370px, calc(100vw - 24px)); height: min(560px, calc(100vh - 110px));
      background: #fff; border-radius: 14px; box-shadow: 0 10px 40px rgba(0,0,0,.28);
      display: flex; flex-direction: column; overflow: hidden; }
    .panel[hidden] { display: none; }
    header { background: var(--accent); color: #fff; padding: 12px 14px; display: flex; align-items: center; gap: 10px; }
    header .titles { flex: 1; min-width: 0; }
    header h2 { margin: 0; font-size: 16px; font-weight: 650; }
    .availability { font-size: 13px; opacity: .95; display: flex; align-items: center; gap: 6px; }
    .dot { width: 8px; height: 8px; border-radius: 50%; background: #9ca3af; flex: none; }
    .availability[data-available="true"] .dot { background: #4ade80; }
    .close { background: transparent; border: none; color: #fff; width: 32px; height: 32px; border-radius: 6px;
      font-size: 22px; line-height: 1; }
    .close:hover { background: rgba(255,255,255,.18); }
    .conn { font-size: 13px; padding: 6px 14px; background: #fef3c7; color: #78350f; }
    .conn[hidden] { display: none; }
    .log { flex: 1; overflow-y: auto; padding: 12px; margin: 0; list-style: none; display: flex;
      flex-direction: column; gap: 8px; background: #f9fafb; }
    .earlier { align-self: center; background: none; border: 1px solid #d1d5db; border-radius: 14px;
      padding: 3px 12px; font-size: 13px; color: #374151; }
    .msg { max-width: 82%; padding: 8px 11px; border-radius: 14px; white-space: pre-wrap;
      overflow-wrap: anywhere; background: #fff; border: 1px solid #e5e7eb; align-self: flex-start; }
    .msg.mine { align-self: flex-end; background: var(--accent); color: #fff; border-color: transparent; }
    .msg.greeting { background: #eef2ff; border-color: #e0e7ff; }
    .msg .who { display: block; font-size: 12px; font-weight: 600; color: #4b5563; margin-bottom: 2px; }
    .msg .meta { display: block; font-size: 11px; opacity: .8; margin-top: 3px; text-align: right; }
    .msg.deleted .text { font-style: italic; opacity: .75; }
    bdi { unicode-bidi: isolate; }
    .msg .text { unicode-bidi: plaintext; }
    .tick[data-status="read"] { color: #bbf7d0; font-weight: 700; }
    .msg.pending { opacity: .75; }
    .typing { min-height: 22px; padding: 2px 14px; font-size: 13px; color: #4b5563; font-style: italic; background: #f9fafb; }
    .error { padding: 6px 14px; font-size: 13px; color: #991b1b; background: #fee2e2; }
    .error[hidden] { display: none; }
    form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid #e5e7eb; background: #fff; }
    textarea { flex: 1; resize: none; font: inherit; padding: 8px 10px; border: 1px solid #d1d5db;
      border-radius: 10px; height: 42px; max-height: 120px; color: inherit; background: #fff; }
    .send { border: none; border-radius: 10px; background: var(--accent); color: #fff; padding: 0 14px; font-weight: 600; }
    .send:disabled { opacity: .5; cursor: default; }
    .sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
    .attach { border: 1px solid #d1d5db; border-radius: 10px; background: #fff; color: #4b5563; width: 42px;
      display: grid; place-items: center; padding: 0; flex: none; }
    .attach:hover { color: var(--accent); border-color: var(--accent); }
    .attach svg { width: 20px; height: 20px; fill: currentColor; }
    .panel { position: relative; }
    .dropzone { position: absolute; inset: 6px; display: grid; place-items: center; text-align: center; padding: 20px;
      border: 3px dashed var(--accent); border-radius: 12px; background: rgba(255,255,255,.9); color: #111827;
      font-weight: 650; pointer-events: none; }
    .dropzone[hidden] { display: none; }
    .tray { list-style: none; margin: 0; padding: 8px 10px 0; display: flex; flex-wrap: wrap; gap: 6px;
      border-top: 1px solid #e5e7eb; background: #fff; }
    .tray[hidden] { display: none; }
    .tray li { display: flex; align-items: center; gap: 6px; max-width: 100%; font-size: 12px; padding: 3px 3px 3px 8px;
      border: 1px solid #e5e7eb; border-radius: 8px; background: #f9fafb; }
    .tray li[data-state="failed"] { border-color: #fca5a5; background: #fef2f2; color: #991b1b; }
    .tray .file-name { max-width: 130px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
    .tray progress { width: 60px; height: 8px; accent-color: var(--accent); }
    .tray .upload-error { font-weight: 700; }
    .tray button { border: none; background: none; color: #4b5563; font-size: 16px; line-height: 1; padding: 2px 6px;
      border-radius: 6px; }
    .tray button:hover { background: #e5e7eb; }
    .upload-status { font-size: 12px; color: #4b5563; padding: 2px 10px 0; background: #fff; }
    .upload-status:empty { display: none; }
    .files { list-style: none; margin: 4px 0 2px; padding: 0; display: flex; flex-direction: column; gap: 4px;
      white-space: normal; }
    .files img { display: block; max-width: 100%; height: auto; border-radius: 8px; background: #f3f4f6; }
    .files .file-link { display: inline-flex; gap: 6px; align-items: center; color: inherit;
      overflow-wrap: anywhere; }
    .files .file-icon { width: 18px; height: 18px; flex: none; fill: currentColor; }
    .file-size { font-size: 11px; opacity: .8; white-space: nowrap; }
  `;

  // Builds an element; strings become text nodes, so no text is ever parsed as HTML.
  function h(tag, props = {}, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (key === 'text') el.textContent = value;
      else el.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function svgIcon(d = 'M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H8l-5 4V5a2 2 0 0 1 2-2z') {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    const path = document.createElementNS(ns, 'path');
    path.setAttribute('d', d);
    svg.append(path);
    return svg;
  }
  const PAPERCLIP =
    'M16.5 6.5v10a4.5 4.5 0 0 1-9 0V5a3 3 0 0 1 6 0v10.5a1.5 1.5 0 0 1-3 0V6.5H9v9a3 3 0 0 0 6 0V5' +
    'a4.5 4.5 0 0 0-9 0v11.5a6 6 0 0 0 12 0v-10z';
  const DOCUMENT = 'M6 2h8l6 6v12a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2zm7 1.5V9h5.5L13 3.5z';

  const SIZE_UNITS = ['byte', 'kilobyte', 'megabyte', 'gigabyte'];

  // A size for people, in the widget's language: 2.4 MB, 812 kB, 12 bytes.
  function humanSize(bytes) {
    let value = Number(bytes) || 0;
    let unit = 0;
    while (value >= 1000 && unit < SIZE_UNITS.length - 1) {
      value /= 1000;
      unit += 1;
    }
    try {
      return new Intl.NumberFormat(lang, {
        style: 'unit',
        unit: SIZE_UNITS[unit],
        unitDisplay: unit === 0 ? 'long' : 'short',
        maximumFractionDigits: unit === 0 || value >= 10 ? 0 : 1,
      }).format(value);
    } catch {
      return `${Math.round(value)} ${['B', 'kB', 'MB', 'GB'][unit]}`;
    }
  }

  // The server words its limits in bytes; people read 262 kB better.
  const readableSizes = (text) => text.replace(/\b(\d{4,}) bytes\b/g, (_, n) => humanSize(Number(n)));

  // Types the server shows inline; others (SVG among them) are downloads.
  const INLINE_IMAGES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);
  const THUMBNAIL_SIDE = 320;
  // The server takes at most this many files in one message.
  const MAX_FILES = 10;

  // What an image is shown with (its thumbnail, else itself when the server
  // made none), with the size it will take; null for a download link.
  function preview(file) {
    const src = file.thumbnail_url || (INLINE_IMAGES.has(file.content_type) && file.width ? file.url : null);
    if (!src) return null;
    const sized = {};
    if (file.width > 0 && file.height > 0) {
      const scale = Math.min(1, THUMBNAIL_SIDE / Math.max(file.width, file.height));
      sized.width = Math.max(1, Math.round(file.width * scale));
      sized.height = Math.max(1, Math.round(file.height * scale));
    }
    return { src, ...sized };
  }

  // A download link. The page is another origin than the chat server, where
  // browsers ignore `download`: the server's Content-Disposition decides,
  // and a new tab keeps the visitor's page where it was.
  function fileLink(file) {
    const icon = svgIcon(DOCUMENT);
    icon.setAttribute('class', 'file-icon');
    return h(
      'a',
      { class: 'file-link', href: file.url, download: file.name, target: '_blank', rel: 'noopener noreferrer' },
      icon,
      h('bdi', { class: 'file-name', text: file.name }),
      h('span', { class: 'file-size', text: humanSize(file.size) }),
    );
  }

  // A message's files: images as thumbnails sized from the Attachment (no
  // jump as they load) linking to the whole file, others as download links.
  // Signed links expire an hour or two after the message was fetched.
  function expiresSoon(url) {
    try {
      const exp = Number(new URL(url).searchParams.get('exp'));
      return exp > 0 && exp * 1000 < Date.now() + 30000;
    } catch {
      return false;
    }
  }

  // Opens a link through `refresh` (fresh links) when its signature is
  // about to expire.
  function keepFresh(link, file, refresh) {
    link.addEventListener('click', async (event) => {
      if (!expiresSoon(link.href)) return;
      event.preventDefault();
      const fresh = await refresh(file.id);
      if (fresh) window.open(fresh.url, '_blank', 'noopener');
    });
    return link;
  }

  function fileList(files, refresh) {
    return h(
      'ul',
      { class: 'files', 'aria-label': t('attached') },
      ...files.map((file) => {
        const shown = preview(file);
        const key = { 'data-attachment': file.id };
        if (!shown) return h('li', { class: 'file', ...key }, keepFresh(fileLink(file), file, refresh));
        const { src, width, height } = shown;
        const img = h('img', { src, width, height, alt: file.name, decoding: 'async' });
        const title = `${file.name}, ${humanSize(file.size)}`;
        const link = h('a', { href: file.url, target: '_blank', rel: 'noopener noreferrer', title }, img);
        // An expired link is fetched again (the bubble is then drawn anew);
        // one blocked by the site's img-src becomes a download link.
        img.addEventListener(
          'error',
          () => {
            if (expiresSoon(src)) refresh(file.id);
            else link.replaceWith(keepFresh(fileLink(file), file, refresh));
          },
          { once: true },
        );
        return h('li', { class: 'file image', ...key }, keepFresh(link, file, refresh));
      }),
    );
  }

  // Clipboard images are all called image.png: give them a name of their own.
  function pastedName(file) {
    if (!/^image\.\w+$/i.test(file.name || '')) return file;
    const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
    const ext = file.name.split('.').pop();
    return new File([file], `pasted-${stamp}.${ext}`, { type: file.type, lastModified: file.lastModified });
  }

  function loadSaved() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORE_KEY) || 'null');
      if (saved && typeof saved.token === 'string' && saved.user && typeof saved.user.id === 'string') {
        if (!saved.expires_at || Date.parse(saved.expires_at) > Date.now() + 60000) return saved;
      }
    } catch {
      // Unreadable storage: start a new session.
    }
    return null;
  }

  function save(session) {
    try {
      if (session) localStorage.setItem(STORE_KEY, JSON.stringify(session));
      else localStorage.removeItem(STORE_KEY);
    } catch {
      // Storage denied (private mode): the conversation lasts as long as the page.
    }
  }

  function mount(lib) {
    const host = h('div', { 'data-chat-widget': '' });
    const shadow = host.attachShadow({ mode: 'open' });
    // A constructed style sheet is CSSOM, which a host page's
    // Content-Security-Policy does not block the way it blocks <style>.
    let style = null;
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(STYLE);
      shadow.adoptedStyleSheets = [sheet];
    } catch {
      style = document.createElement('style');
      style.textContent = STYLE;
    }

    const badge = h('span', { class: 'badge', hidden: true });
    const launcher = h(
      'button',
      {
        class: 'launcher',
        type: 'button',
        'aria-label': t('open'),
        'aria-expanded': 'false',
        'aria-controls': 'chat-panel',
        'aria-haspopup': 'dialog',
      },
      svgIcon(),
      badge,
    );
    const availability = h(
      'div',
      { class: 'availability', 'data-available': 'false' },
      h('span', { class: 'dot', 'aria-hidden': 'true' }),
      h('span', { class: 'availability-text', text: '' }),
    );
    const closeButton = h('button', { class: 'close', type: 'button', 'aria-label': t('close'), text: '×' });
    const conn = h('div', { class: 'conn', role: 'status', hidden: true });
    const log = h('ol', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-label': title });
    const typingLine = h('div', { class: 'typing', role: 'status', 'aria-live': 'polite' });
    const errorLine = h('div', { class: 'error', role: 'alert', hidden: true });
    const textarea = h('textarea', {
      id: 'chat-input',
      rows: 1,
      placeholder: t('placeholder'),
      maxlength: 4000,
      autocomplete: 'off',
      dir: 'auto',
    });
    const sendButton = h('button', { class: 'send', type: 'submit', text: t('send') });
    const attachButton = h(
      'button',
      { class: 'attach', type: 'button', 'aria-label': t('attach'), title: t('attach') },
      svgIcon(PAPERCLIP),
    );
    const fileInput = h('input', { type: 'file', multiple: true, hidden: true, tabindex: '-1', 'aria-hidden': 'true' });
    const tray = h('ul', { class: 'tray', 'aria-label': t('files'), hidden: true });
    const uploadStatus = h('div', { class: 'upload-status', role: 'status', 'aria-live': 'polite' });
    const dropzone = h('div', { class: 'dropzone', hidden: true, text: t('drop') });
    const form = h(
      'form',
      {},
      attachButton,
      fileInput,
      h('label', { class: 'sr', for: 'chat-input', text: t('label') }),
      textarea,
      sendButton,
    );
    const panel = h(
      'section',
      { class: 'panel', id: 'chat-panel', role: 'dialog', 'aria-labelledby': 'chat-title', hidden: true },
      h(
        'header',
        {},
        h('div', { class: 'titles' }, h('h2', { id: 'chat-title', text: title }), availability),
        closeButton,
      ),
      conn,
      log,
      typingLine,
      errorLine,
      tray,
      uploadStatus,
      form,
      dropzone,
    );
    const root = h('div', { class: 'root' }, panel, launcher);
    root.style.setProperty('--accent', accent);
    if (style) shadow.append(style);
    shadow.append(root);
    document.body.append(host);

    let session = signedIn ? null : loadSaved();
    let client = null;
    let roomId = session ? session.room_id || null : null;
    let roomPromise = null;
    let historyLoaded = false;
    let hasMore = false;
    let unread = 0;
    let availabilityTimer = null;
    const messages = new Map();
    const members = new Map();

    const isOpen = () => !panel.hidden;

    function showError(text) {
      errorLine.textContent = text;
      errorLine.hidden = !text;
    }

    function setUnread(n) {
      unread = n;
      badge.hidden = n === 0;
      badge.textContent = String(n);
      badge.setAttribute('aria-label', t('unread', { n }));
      launcher.setAttribute('aria-label', n ? `${t('open')} (${t('unread', { n })})` : t('open'));
    }

    async function refreshAvailability() {
      try {
        const { available } = await lib.supportAvailability(server);
        availability.dataset.available = String(available);
        availability.lastChild.textContent = available ? t('online') : t('offline');
      } catch {
        availability.dataset.available = 'false';
        availability.lastChild.textContent = t('unavailable');
      }
    }

    function nameOf(userId) {
      const user = members.get(userId);
      return user ? user.name : t('support');
    }

    function tickFor(message) {
      const status = client.statusOf(message.room_id, message.seq);
      const glyph = status === 'sent' ? '✓' : '✓✓';
      return h('span', { class: 'tick', 'data-status': status, title: t(status), 'aria-label': t(status) }, glyph);
    }

    function bubble(message) {
      const mine = client.user && message.sender_id === client.user.id;
      const li = h('li', {
        class: `msg${mine ? ' mine' : ''}${message.deleted ? ' deleted' : ''}`,
        'data-seq': message.seq,
        'data-id': message.id,
      });
      if (!mine) li.append(h('span', { class: 'who' }, h('bdi', { text: nameOf(message.sender_id) })));
      const files = message.deleted ? [] : message.attachments || [];
      // A message of files only has no text line.
      if (message.deleted || message.body || !files.length) {
        li.append(h('span', { class: 'text', dir: 'auto', text: message.deleted ? t('deleted') : message.body }));
      }
      if (files.length) li.append(fileList(files, (id) => refreshFile(message, id)));
      const meta = h('span', { class: 'meta' });
      const time = new Date(message.created_at);
      meta.append(time.toLocaleTimeString(lang, { hour: '2-digit', minute: '2-digit' }));
      if (message.edited_at && !message.deleted) meta.append(` · ${t('edited')}`);
      if (mine) meta.append(' ', tickFor(message));
      li.append(h('span', { class: 'sr', text: mine ? `${t('you')}: ` : '' }), meta);
      return li;
    }

    // Keeps the list in step with `items` ({key, sig, make}), touching only
    // what changed, so a screen reader announces new messages and nothing else.
    const rendered = new Map();
    function reconcile(container, items) {
      const wanted = new Set(items.map((i) => i.key));
      for (const [key, r] of rendered) {
        if (!wanted.has(key)) {
          r.el.remove();
          rendered.delete(key);
        }
      }
      let prev = null;
      for (const item of items) {
        let r = rendered.get(item.key);
        if (!r || r.sig !== item.sig) {
          const el = item.make();
          if (r) r.el.replaceWith(el);
          r = { sig: item.sig, el };
          rendered.set(item.key, r);
        }
        const expected = prev ? prev.nextSibling : container.firstChild;
        if (expected !== r.el) container.insertBefore(r.el, expected);
        prev = r.el;
      }
    }

    function render() {
      const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
      const items = [];
      if (hasMore) {
        items.push({
          key: 'earlier',
          sig: '',
          make: () =>
            h('li', {}, h('button', { class: 'earlier', type: 'button', onclick: loadEarlier, text: t('earlier') })),
        });
      }
      items.push({ key: 'greeting', sig: '', make: () => h('li', { class: 'msg greeting', text: greeting }) });
      for (const seq of [...messages.keys()].sort((a, b) => a - b)) {
        const m = messages.get(seq);
        const mine = client && client.user && m.sender_id === client.user.id;
        const status = mine ? client.statusOf(m.room_id, m.seq) : '';
        const files = (m.attachments || []).map((f) => `${f.id} ${f.url}`).join(',');
        const sig = `${m.body}|${m.deleted}|${m.edited_at || ''}|${status}|${nameOf(m.sender_id)}|${files}`;
        items.push({ key: `m:${seq}`, sig, make: () => bubble(m) });
      }
      if (client) {
        for (const entry of client.outbox) {
          if (entry.room_id !== roomId) continue;
          items.push({
            key: `p:${entry.client_msg_id}`,
            sig: '',
            make: () =>
              h(
                'li',
                { class: 'msg mine pending', 'data-pending': entry.client_msg_id },
                entry.body || !entry.attachments ? h('span', { class: 'text', dir: 'auto', text: entry.body }) : null,
                entry.attachments
                  ? h(
                      'ul',
                      { class: 'files' },
                      ...entry.attachments.map((file) =>
                        h(
                          'li',
                          {},
                          h('bdi', { text: file.name || '' }),
                          ' ',
                          h('span', { class: 'file-size', text: file.size ? humanSize(file.size) : '' }),
                        ),
                      ),
                    )
                  : null,
                h(
                  'span',
                  { class: 'meta' },
                  h('span', { class: 'tick', 'data-status': 'sending', text: t('sending') }),
                ),
              ),
          });
        }
      }
      reconcile(log, items);
      if (atBottom) log.scrollTop = log.scrollHeight;
    }

    function markRead() {
      if (!client || !roomId || !isOpen() || document.visibilityState !== 'visible') return;
      const last = Math.max(0, ...messages.keys());
      if (last > 0) client.markRead(roomId, last).catch(() => {});
      setUnread(0);
    }

    async function loadHistory(beforeSeq) {
      const page = await client.history(roomId, { beforeSeq, limit: 50 });
      for (const m of page.messages) messages.set(m.seq, m);
      hasMore = page.has_more;
    }

    // A page open for hours fetches a message again for fresh file links
    // when an old one is needed; once a minute at most.
    const refreshing = new Map();
    async function refreshFile(message, fileId) {
      let pending = refreshing.get(message.id);
      if (!pending) {
        pending = client
          .history(message.room_id, { afterSeq: message.seq - 1, limit: 1 })
          .then((page) => {
            const fresh = page.messages.find((m) => m.id === message.id);
            if (fresh && fresh.room_id === roomId) {
              messages.set(fresh.seq, fresh);
              render();
            }
            return fresh;
          })
          .catch(() => null);
        refreshing.set(message.id, pending);
        setTimeout(() => refreshing.delete(message.id), 60000);
      }
      const fresh = await pending;
      return (fresh && (fresh.attachments || []).find((f) => f.id === fileId)) || null;
    }

    async function loadEarlier() {
      const first = Math.min(...messages.keys());
      const keep = log.scrollHeight - log.scrollTop;
      await loadHistory(Number.isFinite(first) ? first : undefined);
      render();
      log.scrollTop = log.scrollHeight - keep;
    }

    // Support agents join support rooms by role. The server tells the agents
    // online when this room gets its first message, and lists it in every
    // agent's queue: the widget has nobody to invite (a visitor may not).

    async function openRoom(id) {
      roomId = id;
      if (session) {
        session.room_id = id;
        save(session);
      }
      const joined = await client.join(id);
      for (const user of joined.members) members.set(user.id, user);
      if (!historyLoaded) {
        await loadHistory();
        historyLoaded = true;
      }
      render();
      markRead();
    }

    function ensureRoom() {
      if (roomId) return Promise.resolve(roomId);
      if (!roomPromise) {
        roomPromise = (async () => {
          const room = await client.createRoom({ kind: 'support' });
          await openRoom(room.id);
          return room.id;
        })().finally(() => {
          roomPromise = null;
        });
      }
      return roomPromise;
    }

    async function newSession() {
      const name = dataset.name || undefined;
      session = await lib.createVisitorSession(server, { name });
      roomId = null;
      historyLoaded = false;
      messages.clear();
      save(session);
      return session;
    }

    function start() {
      if (client) return;
      client = new lib.ChatClient({
        server,
        storage: localStorage,
        storageKey: STORE_KEY,
        getToken: async ({ reason }) => {
          if (signedIn) return tokenProvider({ reason });
          // A refused token (the server's secret or database changed) means
          // this visitor is unknown there now: start a new conversation.
          if (!session || reason === 'rejected') await newSession();
          return session.token;
        },
      });
      client.on('state', ({ state }) => {
        const text = state === 'open' ? '' : state === 'connecting' ? t('connecting') : t('reconnecting');
        conn.textContent = text;
        conn.hidden = !text;
        root.dataset.state = state;
        // Whether agents are online is unknown while the connection is down.
        if (state !== 'open') {
          availability.dataset.available = 'false';
          availability.lastChild.textContent = '';
        }
      });
      client.on('ready', ({ rooms, resumed }) => {
        showError('');
        // Availability was blanked while connecting; ask again now.
        if (isOpen()) refreshAvailability();
        if (resumed) return;
        const known = roomId && rooms.some((r) => r.id === roomId);
        if (!known && roomId) {
          // The server no longer has the saved room (a new database): the
          // next message starts a new conversation.
          client.unfollow(roomId);
          roomId = null;
          if (session) {
            session.room_id = null;
            save(session);
          }
        }
        // A signed-in user's own open support conversation (they may be in
        // other rooms too, which the widget leaves to the site's chat page).
        const mine = (r) => r.kind === 'support' && (!signedIn || (!r.closed && r.created_by === client.user.id));
        const support = known ? roomId : (rooms.find(mine) || {}).id;
        if (support) openRoom(support).catch((err) => showError(t('failed', { reason: err.message })));
        else render();
      });
      client.on('message', ({ message, mine }) => {
        if (message.room_id !== roomId) return;
        messages.set(message.seq, message);
        render();
        if (!mine) {
          if (isOpen() && document.visibilityState === 'visible') markRead();
          else setUnread(unread + 1);
        }
      });
      client.on('message:updated', ({ message }) => {
        if (message.room_id !== roomId) return;
        messages.set(message.seq, message);
        render();
      });
      client.on('message:deleted', ({ room_id, message_id }) => {
        if (room_id !== roomId) return;
        for (const m of messages.values()) {
          if (m.id === message_id) messages.set(m.seq, { ...m, deleted: true, body: '', attachments: [] });
        }
        render();
      });
      client.on('user:joined', ({ room_id, user }) => {
        if (room_id === roomId) members.set(user.id, user);
      });
      client.on('typing', ({ room_id, users }) => {
        if (room_id !== roomId) return;
        const others = users.filter((u) => !client.user || u !== client.user.id);
        typingLine.replaceChildren(...(others.length ? tNodes('typing', { name: nameOf(others[0]) }) : []));
      });
      const rerender = ({ room_id }) => {
        if (room_id === roomId) render();
      };
      client.on('message:status', rerender);
      client.on('receipts', rerender);
      client.on('outbox', () => render());
      client.on('send-failed', ({ error }) => showError(t('failed', { reason: error.message })));
      client.on('auth-failed', () => showError(t('unavailable')));
      client.connect().catch(() => {});
      document.addEventListener('visibilitychange', markRead);
    }

    async function open() {
      panel.hidden = false;
      launcher.setAttribute('aria-expanded', 'true');
      root.dataset.open = 'true';
      render();
      textarea.focus();
      refreshAvailability();
      clearInterval(availabilityTimer);
      availabilityTimer = setInterval(refreshAvailability, 30000);
      markRead();
      try {
        await ensureStarted();
      } catch (err) {
        showError(`${t('unavailable')} (${err.message})`);
      }
    }

    // One visitor session per visitor: a second click or an early Enter
    // while the first session is being made waits for it.
    let starting = null;
    function ensureStarted() {
      if (client) return Promise.resolve();
      if (!starting) {
        starting = (async () => {
          if (!session && !signedIn) await newSession();
          start();
        })().finally(() => {
          starting = null;
        });
      }
      return starting;
    }

    function close() {
      panel.hidden = true;
      launcher.setAttribute('aria-expanded', 'false');
      root.dataset.open = 'false';
      clearInterval(availabilityTimer);
      launcher.focus();
    }

    // Sends the text with the tray's uploaded and uploading files, once
    // their uploads end (failed ones stay in the tray with their error).
    async function submit() {
      const body = textarea.value.trim();
      const files = uploads.filter((u) => !u.sending && u.state !== 'failed');
      if (!body && !files.length) return;
      if (!client) {
        if (!isOpen()) await open();
        else await ensureStarted().catch(() => {});
        if (!client) return;
      }
      textarea.value = '';
      showError('');
      for (const u of files) u.sending = true;
      renderTray();
      await Promise.all(files.map((u) => u.settled));
      const ready = files.filter((u) => u.state === 'done');
      uploads = uploads.filter((u) => !ready.includes(u));
      renderTray();
      if (!body && !ready.length) return;
      try {
        const id = await ensureRoom();
        const sent = client.send(id, body, { attachments: ready.map((u) => u.attachment) });
        render();
        await sent;
      } catch (err) {
        if (!textarea.value) textarea.value = body;
        showError(t('failed', { reason: err.message }));
        // The files are still uploaded: back to the tray for another try.
        for (const u of ready) u.sending = false;
        uploads = [...ready, ...uploads];
        renderTray();
      }
    }

    // ---- attachments: picked, dropped or pasted; uploaded at once ----------

    // {key, file, name, state: 'uploading'|'done'|'failed', loaded, total,
    //  attachment, error, controller, settled, sending, el}, in order.
    let uploads = [];
    let uploadKeys = 0;

    async function addFiles(list) {
      if (!list.length) return;
      showError('');
      try {
        await ensureStarted();
      } catch (err) {
        showError(`${t('unavailable')} (${err.message})`);
        return;
      }
      const refused = [];
      for (const file of list) {
        if (uploads.filter((u) => !u.sending).length >= MAX_FILES) refused.push(file);
        else startUpload(file);
      }
      if (refused.length) showError(t('tooMany', { n: MAX_FILES }));
      renderTray();
    }

    function startUpload(file) {
      const upload = {
        key: `u${(uploadKeys += 1)}`,
        file,
        name: file.name || 'file',
        state: 'uploading',
        loaded: 0,
        total: file.size || 0,
        attachment: null,
        error: '',
        controller: new AbortController(),
        sending: false,
        el: null,
      };
      upload.settled = client
        .upload(file, {
          signal: upload.controller.signal,
          onProgress: ({ loaded, total }) => {
            upload.loaded = loaded;
            upload.total = total;
            const bar = upload.el && upload.el.querySelector('progress');
            if (bar) {
              bar.max = total || 1;
              bar.value = Math.min(loaded, bar.max);
            }
          },
        })
        .then(
          (attachment) => {
            upload.state = 'done';
            upload.attachment = attachment;
            renderTray();
          },
          (err) => {
            if (err.code === 'aborted') {
              uploads = uploads.filter((u) => u !== upload);
            } else {
              upload.state = 'failed';
              upload.error = uploadError(err);
              showError(t('notAttached', { name: upload.name, reason: upload.error }));
            }
            renderTray();
          },
        );
      uploads.push(upload);
    }

    // The server words its errors in English: other languages get their
    // own words first, the server's detail after.
    function uploadError(err) {
      if (err.code === 'disconnected') return t('unreachable');
      const detail = readableSizes(err.message || err.code);
      if (err.code !== 'too_large' || lang === 'en') return detail;
      return `${t(/quota/i.test(detail) ? 'overQuota' : 'tooBig')} (${detail})`;
    }

    function removeUpload(upload) {
      if (upload.state === 'uploading') upload.controller.abort();
      uploads = uploads.filter((u) => u !== upload);
      if (upload.state === 'failed' && !uploads.some((u) => u.state === 'failed')) showError('');
      renderTray();
      textarea.focus();
    }

    function renderTray() {
      // The tray takes room from the log: the newest message stays in view.
      const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
      tray.hidden = uploads.length === 0;
      uploadStatus.textContent = uploads.some((u) => u.sending && u.state === 'uploading') ? t('waiting') : '';
      tray.replaceChildren(
        ...uploads.map((upload) => {
          const shown = upload.el && upload.el.dataset;
          if (!shown || shown.state !== upload.state || shown.sending !== String(upload.sending)) {
            upload.el = trayItem(upload);
          }
          return upload.el;
        }),
      );
      if (atBottom) log.scrollTop = log.scrollHeight;
    }

    function trayItem(upload) {
      const { name, state } = upload;
      const li = h('li', { 'data-state': state, 'data-sending': String(upload.sending), 'data-upload': upload.key });
      li.append(
        h('bdi', { class: 'file-name', title: name, text: name }),
        h('span', { class: 'file-size', text: humanSize(upload.file.size) }),
      );
      if (state === 'failed') {
        // The error line above says why, at full width; here a mark and a tooltip.
        li.title = upload.error;
        li.append(h('span', { class: 'upload-error', 'aria-hidden': 'true', text: '!' }));
      } else {
        const bar = h('progress', { 'aria-label': t('upload', { name }) });
        bar.max = upload.total || 1;
        bar.value = state === 'done' ? bar.max : Math.min(upload.loaded, bar.max);
        li.append(bar);
      }
      const label = state === 'uploading' ? t('cancelUpload', { name }) : t('remove', { name });
      const onclick = () => removeUpload(upload);
      li.append(h('button', { type: 'button', 'aria-label': label, title: label, text: '×', onclick }));
      return li;
    }

    attachButton.addEventListener('click', () => fileInput.click());
    fileInput.addEventListener('change', () => {
      const list = [...fileInput.files];
      fileInput.value = '';
      textarea.focus();
      addFiles(list);
    });
    // Files dropped on the open panel are attached; the host page's own
    // drag and drop is left alone everywhere else.
    const carriesFiles = (event) => !!event.dataTransfer && [...event.dataTransfer.types].includes('Files');
    let dragDepth = 0;
    panel.addEventListener('dragenter', (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      dragDepth += 1;
      dropzone.hidden = false;
    });
    panel.addEventListener('dragover', (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = 'copy';
    });
    panel.addEventListener('dragleave', () => {
      dragDepth = Math.max(0, dragDepth - 1);
      if (dragDepth === 0) dropzone.hidden = true;
    });
    panel.addEventListener('drop', (event) => {
      dragDepth = 0;
      dropzone.hidden = true;
      if (!event.dataTransfer || event.dataTransfer.files.length === 0) return;
      event.preventDefault();
      addFiles([...event.dataTransfer.files]);
      textarea.focus();
    });
    // A pasted screenshot is attached; pasted text is pasted as usual.
    textarea.addEventListener('paste', (event) => {
      const data = event.clipboardData;
      const list = data ? [...data.files] : [];
      if (!list.length) return;
      if (![...data.types].includes('text/plain')) event.preventDefault();
      addFiles(list.map(pastedName));
    });

    launcher.addEventListener('click', () => (isOpen() ? close() : open()));
    closeButton.addEventListener('click', close);
    panel.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') {
        event.preventDefault();
        close();
      }
    });
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      submit();
    });
    textarea.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submit();
      }
    });
    textarea.addEventListener('input', () => {
      if (client && roomId && textarea.value) client.typing(roomId);
    });
    textarea.addEventListener('blur', () => {
      if (client && roomId) client.stopTyping(roomId);
    });

    // A returning visitor, or a signed-in user, connects at once, so new
    // answers show as unread.
    if (session || signedIn) start();
  }

  function boot() {
    import(`${server}/chat-client.js`).then(mount, (err) => {
      console.error(
        `chat widget: cannot load ${server}/chat-client.js; is this page's origin (${location.origin}) ` +
          'in the chat server\'s CHAT_ALLOWED_ORIGINS?',
        err,
      );
    });
  }

  if (document.body) boot();
  else document.addEventListener('DOMContentLoaded', boot);
})();
