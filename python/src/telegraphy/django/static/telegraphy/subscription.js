// A plain topic subscription: what client.subscribeTopic() resolves to.

export class TopicSubscription {
  /** Not persistent: dropped if the connection is lost before its first SUBSCRIBED. */
  persistent = false;

  constructor(registry, topic, match, callback) {
    this.topic = topic;
    this.match = match;
    this.callback = callback;
    this.active = true;
    this.registry = registry;
  }

  /** Called by the registry for each EVENT: callback(args, kwargs, details). */
  onEvent(args, kwargs, details) {
    this.callback(args, kwargs, details);
  }

  /** Stops the callback at once; resolves when the gateway has been told. */
  unsubscribe() {
    this.active = false;
    return this.registry.remove(this);
  }
}
