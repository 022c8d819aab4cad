/*
 * qlink_acl: the device rules of qlink's managed Mosquitto 2.0 broker, as a plugin of
 * Mosquitto's v5 plugin API (include/mosquitto_broker.h, mosquitto_plugin.h).
 *
 * Mosquitto asks the ACL callbacks of its plugins in configuration order, before the acl_file;
 * the first answer that is not MOSQ_ERR_PLUGIN_DEFER ends the check (src/security.c,
 * mosquitto_acl_check). This plugin is configured first. For a client whose user name is a
 * device ID (64 lowercase hex: `use_identity_as_username` makes it the certificate's CN):
 *
 *   - in the denied set, or before the server has filled the set ("open"): DENIED, and the
 *     connection is dropped at the next tick (<= 100 ms: the broker's epoll timeout);
 *   - with one OU in its certificate (the tenant, written there by the CA): it may publish only
 *     qlink/<OU>/<CN>/telemetry and qlink/<OU>/<CN>/event, and subscribe to, unsubscribe from
 *     and receive only qlink/<OU>/<CN>/cmd; everything else is DENIED (a denied SUBSCRIBE is
 *     answered with 0x80 in MQTT 3.1.1, src/handle_subscribe.c);
 *   - without an OU (a certificate issued before tenants were written in): DEFER, so the
 *     dynamic-security plugin and the acl_file pattern judge it as before.
 * Every other client (the server's admin) gets DEFER.
 *
 * The denied set is changed over $CONTROL/qlink/v1, only by the admin user name
 * (plugin_opt_admin). A request is ASCII lines, each ending in '\n':
 *
 *     <verb> <correlation>\n       verb: deny | allow | open; correlation: 1-32 of [A-Za-z0-9_-]
 *     <device ID>\n                 zero or more (at most MAX_IDS), 64 lowercase hex each;
 *                                   none with "open"
 *
 * and is answered to the requesting client alone on $CONTROL/qlink/v1/response:
 *
 *     <correlation> ok <changed> <size>\n     or     <correlation> error <reason>\n
 *
 * with "-" as correlation when the request has none that can be read. A request is checked
 * whole before anything changes: a malformed one changes nothing. "deny" drops each named
 * device's live connection; "allow" drops the connection of each device it took out of the set,
 * so that it reconnects and subscribes again with its rights.
 *
 * The set lives in broker memory: the server fills it when it starts (policy reapply_denials),
 * then sends "open". Until then every device is DENIED, so a broker that has just started never
 * serves a device the server has denied.
 *
 * Presence: when a device's connection closes (MOSQ_EVT_DISCONNECT: the device left, its link
 * broke, a newer connection took its client ID over, or a deny dropped it), the broker itself
 * publishes {"client":"<device ID>"} on $CONTROL/qlink/v1/presence. Only the admin may
 * subscribe to or receive that topic and no client may publish on it (a client's PUBLISH to
 * $CONTROL/... never reaches a subscriber either: the broker hands it to the plugin registered
 * for the topic, and none is), so a disconnection the server hears of is one the broker saw.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define CONTROL_TOPIC "$CONTROL/qlink/v1"
#define RESPONSE_TOPIC "$CONTROL/qlink/v1/response"
#define PRESENCE_TOPIC "$CONTROL/qlink/v1/presence"
#define ID_HEX 64                           /* a device ID: SHA-256 of its public key, in hex */
#define ID_LEN 32                           /* the same, as bytes */
#define OU_MAX 64                           /* a tenant name's longest form (store/names.py) */
#define CORR_MAX 32                         /* correlation characters */
#define HEAD_MAX 48                         /* "allow " + correlation + '\n', with room */
#define MAX_IDS 4096                        /* device IDs in one request */
#define MAX_PAYLOAD (HEAD_MAX + MAX_IDS * (ID_HEX + 1))
#define MAX_DENIED (1u << 23)               /* devices in the set (8 Mi: 512 MiB of slots) */
#define MIN_SLOTS 1024u                     /* the table's first size; a power of two */
#define KICK_MAX 256                        /* connections dropped per tick */

static mosquitto_plugin_id_t *plugin_id;
static char admin[128] = "qlink-admin";     /* plugin_opt_admin: the one user that may control */
static bool opened;                         /* the server has filled the set */

/* -- the denied set: open addressing, linear probing, backward-shift deletion --------------- */
/* Keys are SHA-256 outputs, uniform already; the per-start seed keeps a set built from IDs an
 * importer chose from clustering in a way an outsider could predict. */
static uint8_t (*slots)[ID_LEN];
static uint8_t *used;
static size_t nslots, ndenied;
static uint64_t seed;

/* The home slot of `id` in a table of `n` (a power of two) slots: the top bits of a
 * multiplicative hash (Fibonacci hashing, Knuth TAOCP vol. 3, 6.4). */
static size_t home(const uint8_t *id, size_t n)
{
	uint64_t h;

	memcpy(&h, id, sizeof(h));
	h = (h ^ seed) * 0x9E3779B97F4A7C15ull;
	return (size_t)(h >> (64 - __builtin_ctzll((unsigned long long)n)));
}

static bool find(const uint8_t *id, size_t *at)
{
	size_t i;

	if(nslots == 0) return false;
	for(i = home(id, nslots); used[i]; i = (i + 1) & (nslots - 1)){
		if(memcmp(slots[i], id, ID_LEN) == 0){
			*at = i;
			return true;
		}
	}
	*at = i; /* the free slot where it would go */
	return false;
}

/* Room for `more` new entries at a load of at most 1/2; false (set unchanged) when memory or
 * MAX_DENIED does not allow it. Called before a request changes anything. */
static bool reserve(size_t more)
{
	size_t n = nslots ? nslots : MIN_SLOTS, i, j;
	uint8_t (*new_slots)[ID_LEN];
	uint8_t *new_used;

	if(ndenied + more > MAX_DENIED) return false;
	while((ndenied + more) * 2 > n) n *= 2;
	if(n == nslots) return true;
	new_slots = mosquitto_calloc(n, ID_LEN);
	new_used = mosquitto_calloc(n, 1);
	if(!new_slots || !new_used){
		mosquitto_free(new_slots);
		mosquitto_free(new_used);
		return false;
	}
	for(i = 0; i < nslots; i++){
		if(!used[i]) continue;
		for(j = home(slots[i], n); new_used[j]; j = (j + 1) & (n - 1)){}
		memcpy(new_slots[j], slots[i], ID_LEN);
		new_used[j] = 1;
	}
	mosquitto_free(slots);
	mosquitto_free(used);
	slots = new_slots;
	used = new_used;
	nslots = n;
	return true;
}

static bool insert(const uint8_t *id)
{
	size_t at;

	if(find(id, &at)) return false;
	memcpy(slots[at], id, ID_LEN);
	used[at] = 1;
	ndenied++;
	return true;
}

static bool erase(const uint8_t *id)
{
	size_t i, j, k, mask = nslots - 1;

	if(!find(id, &i)) return false;
	used[i] = 0;
	ndenied--;
	/* Shift back each following entry of the run that the hole would hide from its home. */
	for(j = (i + 1) & mask; used[j]; j = (j + 1) & mask){
		k = home(slots[j], nslots);
		if(i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
		memcpy(slots[i], slots[j], ID_LEN);
		used[i] = 1;
		used[j] = 0;
		i = j;
	}
	return true;
}

/* -- parsing ------------------------------------------------------------------------------- */
static int hexval(uint8_t c)
{
	if(c >= '0' && c <= '9') return c - '0';
	if(c >= 'a' && c <= 'f') return c - 'a' + 10;
	return -1; /* upper case too: a device ID has one spelling */
}

/* `s` (exactly ID_HEX characters) as a device ID into `out`; false if it is not one. */
static bool parse_id(const char *s, uint8_t *out)
{
	int i, hi, lo;

	for(i = 0; i < ID_LEN; i++){
		hi = hexval((uint8_t)s[2 * i]);
		lo = hexval((uint8_t)s[2 * i + 1]);
		if(hi < 0 || lo < 0) return false;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return true;
}

/* The client's user name as a device ID; false for any other name (the admin's). */
static bool device_of(struct mosquitto *client, uint8_t *id)
{
	const char *user = mosquitto_client_username(client);

	return user && strlen(user) == ID_HEX && parse_id(user, id);
}

static bool name_char(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		|| c == '.' || c == '_' || c == '-';
}

/* The certificate's OU into `ou`: 1 one OU in the name alphabet, 0 none, -1 anything else
 * (several OUs, too long, a character that means something in a topic such as / + #). */
static int read_ou(X509 *cert, char *ou)
{
	X509_NAME *name = X509_get_subject_name(cert);
	const ASN1_STRING *value;
	const unsigned char *p;
	int i, len;

	if(!name) return -1;
	i = X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, -1);
	if(i < 0) return 0;
	if(X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, i) >= 0) return -1;
	value = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
	if(!value) return -1;
	len = ASN1_STRING_length(value);
	p = ASN1_STRING_get0_data(value);
	if(!p || len < 1 || len > OU_MAX) return -1;
	for(i = 0; i < len; i++){
		if(!name_char(p[i])) return -1;
	}
	memcpy(ou, p, (size_t)len);
	ou[len] = '\0';
	return 1;
}

/* -- dropping connections ------------------------------------------------------------------ */
/* On the device listener `use_username_as_clientid` makes the client ID the device ID, so the
 * broker's client-ID hash finds the connection in O(1) (kick_client_by_username walks every
 * connection). A denied client's ACL checks queue it; the tick drops it: not from inside an
 * ACL check, whose caller goes on using the connection. */
static uint8_t kicks[KICK_MAX][ID_LEN];
static int nkicks;

static void kick(const uint8_t *id)
{
	static const char hex[] = "0123456789abcdef";
	char client_id[ID_HEX + 1];
	int i;

	for(i = 0; i < ID_LEN; i++){
		client_id[2 * i] = hex[id[i] >> 4];
		client_id[2 * i + 1] = hex[id[i] & 15];
	}
	client_id[ID_HEX] = '\0';
	mosquitto_kick_client_by_clientid(client_id, false); /* false: no will message */
}

static void queue_kick(const uint8_t *id)
{
	int i;

	for(i = 0; i < nkicks; i++){
		if(memcmp(kicks[i], id, ID_LEN) == 0) return;
	}
	if(nkicks < KICK_MAX) memcpy(kicks[nkicks++], id, ID_LEN); /* full: a later check queues */
}

static int on_tick(int event, void *event_data, void *userdata)
{
	int i;

	(void)event;
	(void)event_data;
	(void)userdata;
	for(i = 0; i < nkicks; i++) kick(kicks[i]);
	nkicks = 0;
	return MOSQ_ERR_SUCCESS;
}

/* -- the ACL check ------------------------------------------------------------------------- */
static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	uint8_t id[ID_LEN];
	char ou[OU_MAX + 1], own[sizeof("qlink///telemetry") + OU_MAX + ID_HEX];
	const char *user = mosquitto_client_username(ed->client);
	size_t at;
	X509 *cert;
	int has_ou;

	(void)event;
	(void)userdata;
	if(strcmp(ed->topic, PRESENCE_TOPIC) == 0){
		/* The broker's own publish is not checked (mosquitto_broker_publish); a client's is
		 * refused, and only the admin may subscribe and receive. */
		if(ed->access == MOSQ_ACL_WRITE) return MOSQ_ERR_ACL_DENIED;
		return user && strcmp(user, admin) == 0 ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	}
	if(!device_of(ed->client, id)) return MOSQ_ERR_PLUGIN_DEFER;
	if(!opened || find(id, &at)){
		queue_kick(id);
		return MOSQ_ERR_ACL_DENIED;
	}
	cert = mosquitto_client_certificate(ed->client);
	if(!cert) return MOSQ_ERR_PLUGIN_DEFER;
	has_ou = read_ou(cert, ou);
	X509_free(cert);
	if(has_ou == 0) return MOSQ_ERR_PLUGIN_DEFER;
	if(has_ou < 0) return MOSQ_ERR_ACL_DENIED;
	switch(ed->access){
		case MOSQ_ACL_WRITE:
			snprintf(own, sizeof(own), "qlink/%s/%s/telemetry", ou, user);
			if(strcmp(ed->topic, own) == 0) return MOSQ_ERR_SUCCESS;
			snprintf(own, sizeof(own), "qlink/%s/%s/event", ou, user);
			return strcmp(ed->topic, own) == 0 ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_READ:
		case MOSQ_ACL_SUBSCRIBE:
		case MOSQ_ACL_UNSUBSCRIBE:
			/* The exact topic, no wildcard: a filter is compared as a string here. */
			snprintf(own, sizeof(own), "qlink/%s/%s/cmd", ou, user);
			return strcmp(ed->topic, own) == 0 ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

/* -- presence ------------------------------------------------------------------------------ */
static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	char payload[sizeof("{\"client\":\"\"}") + ID_HEX];
	uint8_t id[ID_LEN];

	(void)event;
	(void)userdata;
	if(!device_of(ed->client, id)) return MOSQ_ERR_SUCCESS;
	snprintf(payload, sizeof(payload), "{\"client\":\"%s\"}", user);
	/* QoS 1: the server's subscription keeps it across a moment's reconnection. */
	mosquitto_broker_publish_copy(NULL, PRESENCE_TOPIC, (int)strlen(payload), payload, 1, false, NULL);
	return MOSQ_ERR_SUCCESS;
}

/* -- control ------------------------------------------------------------------------------- */
/* QoS 0, as the dynamic-security plugin answers: the admin connection is on the loopback, and
 * a QoS 1 answer's PUBACK followed by the next request met Nagle's algorithm and the delayed
 * ACK (RFC 896, RFC 1122 4.2.3.2): 40 ms per request. */
static void respond(struct mosquitto *client, const char *text)
{
	const char *to = mosquitto_client_id(client);

	if(to) mosquitto_broker_publish_copy(to, RESPONSE_TOPIC, (int)strlen(text), text, 0, false, NULL);
}

static void refuse(struct mosquitto *client, const char *corr, const char *reason)
{
	char line[HEAD_MAX + 32];

	snprintf(line, sizeof(line), "%s error %s\n", corr, reason);
	mosquitto_log_printf(MOSQ_LOG_WARNING, "qlink_acl: refused a control request: %s", reason);
	respond(client, line);
}

enum verb { DENY, ALLOW, OPEN };

static int on_control(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	const char *p = ed->payload, *user, *nl, *sp;
	char corr[CORR_MAX + 1] = "-", line[HEAD_MAX + 64];
	size_t len = ed->payloadlen, head, clen, nids, i, changed = 0;
	enum verb verb;
	uint8_t id[ID_LEN];

	(void)event;
	(void)userdata;
	user = mosquitto_client_username(ed->client);
	if(!user || strcmp(user, admin) != 0){
		refuse(ed->client, corr, "forbidden");
		return MOSQ_ERR_ACL_DENIED;
	}
	if(len > MAX_PAYLOAD){
		refuse(ed->client, corr, "too-large");
		return MOSQ_ERR_SUCCESS;
	}
	/* The head: "<verb> <correlation>\n" within HEAD_MAX bytes. */
	nl = len ? memchr(p, '\n', len < HEAD_MAX ? len : HEAD_MAX) : NULL;
	sp = nl ? memchr(p, ' ', (size_t)(nl - p)) : NULL;
	if(!sp){
		refuse(ed->client, corr, "malformed-head");
		return MOSQ_ERR_SUCCESS;
	}
	clen = (size_t)(nl - sp - 1);
	if(clen < 1 || clen > CORR_MAX){
		refuse(ed->client, corr, "malformed-correlation");
		return MOSQ_ERR_SUCCESS;
	}
	for(i = 0; i < clen; i++){
		uint8_t c = (uint8_t)sp[1 + i];
		if(!(name_char(c) && c != '.')){
			refuse(ed->client, corr, "malformed-correlation");
			return MOSQ_ERR_SUCCESS;
		}
	}
	memcpy(corr, sp + 1, clen);
	corr[clen] = '\0';
	if(sp - p == 4 && memcmp(p, "deny", 4) == 0) verb = DENY;
	else if(sp - p == 5 && memcmp(p, "allow", 5) == 0) verb = ALLOW;
	else if(sp - p == 4 && memcmp(p, "open", 4) == 0) verb = OPEN;
	else{
		refuse(ed->client, corr, "unknown-verb");
		return MOSQ_ERR_SUCCESS;
	}
	/* The body: whole lines of one device ID each, every one checked before any is applied. */
	head = (size_t)(nl - p) + 1;
	if((len - head) % (ID_HEX + 1) != 0){
		refuse(ed->client, corr, "malformed-id");
		return MOSQ_ERR_SUCCESS;
	}
	nids = (len - head) / (ID_HEX + 1);
	if(nids > MAX_IDS || (verb == OPEN && nids != 0)){
		refuse(ed->client, corr, "too-many-ids");
		return MOSQ_ERR_SUCCESS;
	}
	for(i = 0; i < nids; i++){
		const char *s = p + head + i * (ID_HEX + 1);
		if(s[ID_HEX] != '\n' || !parse_id(s, id)){
			refuse(ed->client, corr, "malformed-id");
			return MOSQ_ERR_SUCCESS;
		}
	}
	if(verb == DENY && !reserve(nids)){
		refuse(ed->client, corr, "set-full");
		return MOSQ_ERR_SUCCESS;
	}
	for(i = 0; i < nids; i++){
		parse_id(p + head + i * (ID_HEX + 1), id);
		if(verb == DENY){
			changed += insert(id);
			kick(id); /* also one denied before that has connected again */
		}else if(erase(id)){
			changed++;
			kick(id);
		}
	}
	if(verb == OPEN && !opened){
		opened = true;
		changed = 1;
	}
	if(changed){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "qlink_acl: %s: %zu changed, %zu denied",
			verb == DENY ? "deny" : verb == ALLOW ? "allow" : "open", changed, ndenied);
	}
	snprintf(line, sizeof(line), "%s ok %zu %zu\n", corr, changed, ndenied);
	respond(ed->client, line);
	return MOSQ_ERR_SUCCESS;
}

/* -- plugin entry points ------------------------------------------------------------------- */
int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	int i, rc;

	(void)userdata;
	plugin_id = identifier;
	for(i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "admin") == 0){
			if(strlen(options[i].value) == 0 || strlen(options[i].value) >= sizeof(admin)){
				mosquitto_log_printf(MOSQ_LOG_ERR, "qlink_acl: plugin_opt_admin is empty or too long");
				return MOSQ_ERR_INVAL;
			}
			strcpy(admin, options[i].value);
		}
	}
	if(getrandom(&seed, sizeof(seed), 0) != sizeof(seed)) return MOSQ_ERR_UNKNOWN;
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_free(slots);
	mosquitto_free(used);
	slots = NULL;
	used = NULL;
	nslots = ndenied = 0;
	return MOSQ_ERR_SUCCESS;
}
