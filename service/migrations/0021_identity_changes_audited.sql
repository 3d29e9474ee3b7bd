-- Who may sign in as whom is an access right too: trusting an identity provider,
-- linking a subject to a principal, and registering a SMART client's keys are
-- recorded by the database itself, whoever makes the change (as in 0005).

CREATE FUNCTION sealednotes_audit_identity() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_tenant uuid;
BEGIN
    IF TG_TABLE_NAME = 'tenant_idps' THEN
        IF TG_OP = 'DELETE' THEN
            PERFORM sealednotes_audit_change(OLD.tenant_id, NULL, 'tenant.idp',
                'removed issuer=' || OLD.issuer);
        ELSE
            PERFORM sealednotes_audit_change(NEW.tenant_id, NULL, 'tenant.idp',
                'set issuer=' || NEW.issuer || ' audience=' || NEW.audience
                || ' allow_create=' || NEW.allow_create);
        END IF;
    ELSIF TG_TABLE_NAME = 'principal_identities' THEN
        IF TG_OP = 'DELETE' THEN
            PERFORM sealednotes_audit_change(OLD.tenant_id, NULL, 'principal.unlink',
                'target=' || OLD.principal_id);
        ELSE
            PERFORM sealednotes_audit_change(NEW.tenant_id, NULL, 'principal.link',
                'target=' || NEW.principal_id);
        END IF;
    ELSIF TG_TABLE_NAME = 'oauth_clients' THEN
        SELECT tenant_id INTO v_tenant FROM principals WHERE id = NEW.principal_id;
        PERFORM sealednotes_audit_change(v_tenant, NULL, 'client.register',
            'target=' || NEW.principal_id || ' client_id=' || NEW.client_id || ' keys='
            || CASE WHEN NEW.jwks_url IS NULL THEN 'inline' ELSE 'url' END);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION sealednotes_audit_identity() FROM PUBLIC;

CREATE TRIGGER tenant_idps_audit AFTER INSERT OR UPDATE OR DELETE ON tenant_idps
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_identity();
CREATE TRIGGER principal_identities_audit AFTER INSERT OR UPDATE OR DELETE ON principal_identities
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_identity();
CREATE TRIGGER oauth_clients_audit AFTER INSERT OR UPDATE ON oauth_clients
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_identity();
